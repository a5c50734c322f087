"""Drain benchmark for procrastinate (run with the Python of a throwaway venv that has it).

Queues N no-op jobs (batch defer), then one worker runs them at the given concurrency. Prints
one JSON line: jobs, seconds from the first job's start to the moment every job is marked
succeeded in the database, and jobs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from importlib.metadata import version

import procrastinate

DEFER_CHUNK = 1000


async def drain(dsn: str, jobs: int, concurrency: int, timeout: float) -> dict:
    """Queue ``jobs`` no-op jobs, run them, return the timing."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    handled = asyncio.Event()
    state = {"first": 0.0, "count": 0}

    @app.task(name="noop")
    async def noop() -> None:
        if not state["count"]:
            state["first"] = time.time()
        state["count"] += 1
        if state["count"] >= jobs:
            handled.set()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        for start in range(0, jobs, DEFER_CHUNK):
            size = min(DEFER_CHUNK, jobs - start)
            await noop.batch_defer_async(*[{} for _ in range(size)])
        worker = asyncio.create_task(app.run_worker_async(concurrency=concurrency, wait=True,
                                                          install_signal_handlers=False))
        await asyncio.wait_for(handled.wait(), timeout)
        while True:
            rows = await app.connector.execute_query_all_async(
                "SELECT count(*) AS left FROM procrastinate_jobs WHERE status <> 'succeeded'")
            if rows[0]["left"] == 0:
                break
            await asyncio.sleep(0.005)
        end = time.time()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(worker, 30)
    seconds = end - state["first"]
    return {"jobs": state["count"], "seconds": seconds, "rate": jobs / seconds,
            "version": version("procrastinate")}


def main() -> None:
    """Command line: --dsn, --jobs, --concurrency."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(drain(args.dsn, args.jobs, args.concurrency, args.timeout))))


if __name__ == "__main__":
    main()
