"""6. Worker memory: resident set size of one worker process over a long drain.

The no-op tasks are written in SQL while their type is paused, one worker (batch 10) drains
them, and its ``VmRSS`` is sampled twice a second. "start" is the RSS once 5% of the tasks are
done (imports, pools and caches warmed up); "end" is the RSS when the last task finished, or
when the time budget ran out (the number of tasks run is given).
"""

from __future__ import annotations

import time

from .common import (
    Context,
    Process,
    bench_app,
    bulk_insert_tasks,
    dispose,
    pg_database,
    psql_connect,
    rss_kib,
)
from .drain import NOOP, count_waiting, set_paused, start_workers_paused

NAME = "memory"
TIME_BUDGET = 240.0  # seconds the full run may spend draining; it reports how many it ran


def run(ctx: Context) -> None:
    """RSS growth of one worker over many tasks (or as many as the time budget allows)."""
    count = 5_000 if ctx.quick else 200_000
    budget = 60.0 if ctx.quick else TIME_BUDGET
    with pg_database(NAME) as url:
        app = bench_app(url)
        procs: list[Process] = []
        samples: list[tuple[int, int]] = []  # (tasks done, RSS KiB)
        try:
            set_paused(app, NOOP, True)
            bulk_insert_tasks(url, count, "PENDING")
            with psql_connect(url) as conn:  # as autovacuum would; the claim benchmark covers the
                conn.execute("VACUUM ANALYZE async_task")  # not-yet-analysed case
            procs = start_workers_paused(ctx, app, url, 1, "memory", ASYNC_TASK_BATCH_SIZE=10)
            pid = procs[0].pid
            set_paused(app, NOOP, False)
            deadline = time.monotonic() + budget
            done = 0
            while done < count and time.monotonic() < deadline:
                if not procs[0].alive():
                    raise RuntimeError(f"the worker died:\n{procs[0].log_tail()}")
                rss = rss_kib(pid)
                done = count - count_waiting(app)
                if rss is not None:
                    samples.append((done, rss))
                time.sleep(0.5)
            end = rss_kib(pid)
        finally:
            for proc in procs:
                proc.stop()
            dispose(app)
    warm = [rss for done_then, rss in samples if done_then >= done * 0.05]
    if end is None or not warm:
        raise RuntimeError("too few RSS samples (the drain ended before warm-up)")
    start = warm[0]
    peak = max([rss for _, rss in samples] + [end])
    growth = (end - start) / start * 100
    note = f"{done:,} tasks run"
    if done < count:
        note += f" (of {count:,} queued: the {budget:.0f} s time budget ran out)"
    ctx.add(NAME, "worker RSS at start (after 5% of the tasks)", start / 1024, "MiB", note)
    ctx.add(NAME, "worker RSS at end", end / 1024, "MiB", f"peak {peak / 1024:.1f} MiB")
    ctx.add(NAME, "worker RSS growth start -> end", growth, "%", "target: within 10%")
    ctx.shared["rss_growth"] = growth
