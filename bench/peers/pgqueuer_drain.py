"""Drain benchmark for pgqueuer (run with the Python of a throwaway venv that has pgqueuer).

Queues N no-op jobs, then one QueueManager consumes them at the given batch size. Prints one
JSON line: jobs, seconds from the first job's start to the moment the queue table is empty
(acknowledgements are buffered, so "done" is when the database says so), and jobs/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg
from pgqueuer import __version__
from pgqueuer.db import AsyncpgDriver
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

ENQUEUE_CHUNK = 1000


async def drain(dsn: str, jobs: int, batch_size: int, timeout: float) -> dict:
    """Queue ``jobs`` no-op jobs, consume them, return the timing."""
    setup = await asyncpg.connect(dsn)
    await Queries(AsyncpgDriver(setup)).install()
    producer = Queries(AsyncpgDriver(setup))
    for start in range(0, jobs, ENQUEUE_CHUNK):
        size = min(ENQUEUE_CHUNK, jobs - start)
        await producer.enqueue(["noop"] * size, [None] * size, [0] * size)

    consumer = await asyncpg.connect(dsn)
    manager = QueueManager(Queries(AsyncpgDriver(consumer)))
    handled = asyncio.Event()
    state = {"first": 0.0, "count": 0}

    @manager.entrypoint("noop")
    async def noop(job: object) -> None:
        if not state["count"]:
            state["first"] = time.time()
        state["count"] += 1
        if state["count"] >= jobs:
            handled.set()

    runner = asyncio.create_task(manager.run(batch_size=batch_size))
    await asyncio.wait_for(handled.wait(), timeout)
    while await setup.fetchval("SELECT count(*) FROM pgqueuer") > 0:
        await asyncio.sleep(0.005)
    end = time.time()
    manager.shutdown.set()
    await asyncio.wait_for(runner, 30)
    await setup.close()
    seconds = end - state["first"]
    return {"jobs": state["count"], "seconds": seconds, "rate": jobs / seconds, "version": __version__}


def main() -> None:
    """Command line: --dsn, --jobs, --batch-size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(drain(args.dsn, args.jobs, args.batch_size, args.timeout))))


if __name__ == "__main__":
    main()
