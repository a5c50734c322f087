"""2. Pickup latency: an idle worker, tasks submitted one at a time from this (another) process.

Latency = the time ``process()`` started (the ``BENCH_STAMP`` processor returns its
``time.time()``) minus the time just after the submit's commit returned here. Both clocks are
the same machine's. The worker runs with default settings (poll interval, batch size), so the
figure is what a user gets out of the box.
"""

from __future__ import annotations

import random
import time
from typing import Any

from .common import Context, Process, bench_app, dispose, percentile, pg_database, sqlite_database
from .drain import set_paused, start_workers_paused, wait_drained

NAME = "pickup"
STAMP = "BENCH_STAMP"
WARM_UP = 3


def measure(ctx: Context, url: str, label: str, samples: int, gap: tuple[float, float]) -> list[float]:
    """Submit ``samples`` tasks one at a time (``gap`` seconds apart); returns latencies in ms."""
    from webapp.extensions import db
    from webapp.tasks.service import AsyncTaskService

    app = bench_app(url)
    procs: list[Process] = []
    submitted: list[tuple[int, float]] = []
    try:
        # Default settings: only the database and processors are given to the worker.
        procs = start_workers_paused(ctx, app, url, 1, label, task_type=STAMP,
                                     ASYNC_TASK_POLL_INTERVAL=None)
        set_paused(app, STAMP, False)
        time.sleep(0.5)
        rng = random.Random(5)
        with app.app_context():
            service = AsyncTaskService()
            for index in range(samples + WARM_UP):
                task = service.submit_task(STAMP, {"n": index})
                committed = time.time()
                submitted.append((task.id, committed))
                db.session.remove()
                time.sleep(rng.uniform(*gap))
        wait_drained(app, procs, len(submitted))
        return _latencies(app, submitted[WARM_UP:])
    finally:
        for proc in procs:
            proc.stop()
        dispose(app)


def _latencies(app: Any, submitted: list[tuple[int, float]]) -> list[float]:
    from webapp.extensions import db
    from webapp.tasks.models import AsyncTask

    with app.app_context():
        rows = {task.id: task for task in db.session.query(AsyncTask).filter(
            AsyncTask.id.in_([task_id for task_id, _ in submitted]))}
        latencies = []
        for task_id, committed in submitted:
            task = rows[task_id]
            if task.status != "SUCCESS" or not task.result or "started" not in task.result:
                raise RuntimeError(f"task {task_id} ended {task.status} without a start stamp")
            latencies.append((float(task.result["started"]) - committed) * 1000)
        db.session.remove()
    return latencies


def run(ctx: Context) -> None:
    """Pickup latency p50/p99 on PostgreSQL (NOTIFY wake-up) and SQLite (polling)."""
    pg_samples = 20 if ctx.quick else 200
    sqlite_samples = 5 if ctx.quick else 30
    with pg_database(NAME) as url:
        values = measure(ctx, url, "pickup-pg", pg_samples, (0.03, 0.07))
    _report(ctx, "postgres", values)
    url = sqlite_database(ctx, "pickup")
    values = measure(ctx, url, "pickup-sqlite", sqlite_samples, (0.1, 0.3))
    _report(ctx, "sqlite", values)


def _report(ctx: Context, backend: str, values: list[float]) -> None:
    note = f"{len(values)} tasks, 1 idle worker, default settings"
    ctx.add(NAME, f"{backend} pickup p50", percentile(values, 50), "ms", note)
    ctx.add(NAME, f"{backend} pickup p99", percentile(values, 99), "ms", note)
    ctx.shared.setdefault("pickup", {})[backend] = (percentile(values, 50), percentile(values, 99))
