"""6. Worker memory: resident set size of one worker process over a long drain.

The no-op tasks are written in SQL while their type is paused, one worker (batch 10) drains
them, and its ``VmRSS`` is sampled twice a second. "start" is the RSS once 5% of the tasks are
done (imports, pools and caches warmed up); "end" is the RSS when the last task finished.
"""

from __future__ import annotations

import time

from .common import Context, Process, bench_app, bulk_insert_tasks, dispose, pg_database, rss_kib
from .drain import NOOP, count_waiting, set_paused, start_workers_paused, wait_drained

NAME = "memory"
TIME_BUDGET = 180.0  # seconds the full run may spend draining; the count is cut to fit


def run(ctx: Context) -> None:
    """RSS growth of one worker over many tasks."""
    wanted = 5_000 if ctx.quick else 200_000
    count = wanted
    note = ""
    measured = ctx.shared.get("drain", {}).get(("postgres", 1, 10))
    if not ctx.quick and measured and wanted / measured > TIME_BUDGET:
        count = max(20_000, int(measured * TIME_BUDGET) // 10_000 * 10_000)
        note = f"; cut from {wanted:,} to fit {TIME_BUDGET:.0f} s at the measured drain rate"
    with pg_database(NAME) as url:
        app = bench_app(url)
        procs: list[Process] = []
        samples: list[tuple[int, int]] = []  # (tasks done, RSS KiB)
        try:
            set_paused(app, NOOP, True)
            bulk_insert_tasks(url, count, "PENDING")
            procs = start_workers_paused(ctx, app, url, 1, "memory", ASYNC_TASK_BATCH_SIZE=10)
            pid = procs[0].pid
            set_paused(app, NOOP, False)
            last = [0.0]

            def sample() -> None:
                if time.monotonic() - last[0] < 0.5:
                    return
                last[0] = time.monotonic()
                rss = rss_kib(pid)
                if rss is not None:
                    samples.append((count - count_waiting(app), rss))

            wait_drained(app, procs, count, on_tick=sample)
            end = rss_kib(pid)
        finally:
            for proc in procs:
                proc.stop()
            dispose(app)
    warm = [rss for done, rss in samples if done >= count * 0.05]
    if end is None or not warm:
        raise RuntimeError("too few RSS samples (the drain ended before warm-up)")
    start = warm[0]
    peak = max([rss for _, rss in samples] + [end])
    growth = (end - start) / start * 100
    ctx.add(NAME, "worker RSS at start (after 5% of tasks)", start / 1024, "MiB", f"{count:,} tasks{note}")
    ctx.add(NAME, "worker RSS at end", end / 1024, "MiB", f"peak {peak / 1024:.1f} MiB")
    ctx.add(NAME, "worker RSS growth start -> end", growth, "%", "target: within 10%")
    ctx.shared["rss_growth"] = growth
