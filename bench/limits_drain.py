"""Flow control's cost to everything else: the drain of unlimited no-op tasks beside a backlog
of limited ones, as a ratio to the plain drain of the same run (issue 14: at least 0.9).

Each pair runs on one database and one worker process (batch 10, the headline drain's
settings): first the plain drain (``drain.drain_once``), then the same 10,000 ``BENCH_NOOP``
tasks with ``LIMITED_BACKLOG`` ``BENCH_LIMITED`` tasks waiting (concurrency 1 per customer,
one start a minute: ``bench/limit_processors.py``). Every claim then takes the limited path
(the limited type has due work) and skips the held-back backlog. The rate counts only the
no-op tasks, from their first start to their last finish. Both are best of ``REPEATS``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from .common import (
    Context,
    Process,
    Skipped,
    bench_app,
    dispose,
    pg_database,
    sqlite_database,
    wait_for,
)
from .drain import (
    NOOP,
    _as_utc,
    _dead,
    concurrency,
    drain_once,
    preload,
    reset_tables,
    set_paused,
    start_workers_paused,
)

NAME = "limits"
LIMITED = "BENCH_LIMITED"
PROCESSORS = ["bench.processors", "bench.limit_processors"]
LIMITED_BACKLOG = 5_000
CUSTOMERS = 50
REPEATS = 2
TARGET_RATIO = 0.9


def preload_limited(app: Any, count: int, chunk: int = 1000) -> None:
    """Queue ``count`` limited tasks spread over ``CUSTOMERS`` customers."""
    from webapp.extensions import db
    from webapp.tasks.service import AsyncTaskService

    with app.app_context():
        service = AsyncTaskService()
        for start in range(0, count, chunk):
            service.submit_many([{"task_type": LIMITED, "payload": {"customer": n % CUSTOMERS}}
                                 for n in range(start, min(count, start + chunk))])
            db.session.remove()


def noop_window(app: Any) -> tuple[int, float]:
    """(no-op tasks succeeded, seconds from the first no-op start to the last no-op finish)."""
    from webapp.extensions import db
    from webapp.tasks.models import AsyncTask

    with app.app_context():
        try:
            first, last, ok = db.session.execute(
                select(func.min(AsyncTask.started_at), func.max(AsyncTask.finished_at),
                       func.count().filter(AsyncTask.status == "SUCCESS"))
                .where(AsyncTask.task_type == NOOP)).one()
        finally:
            db.session.remove()
    return int(ok), (_as_utc(last) - _as_utc(first)).total_seconds()


def limited_drain_once(ctx: Context, backend: str, count: int, pg_url: str | None) -> float:
    """The no-op drain with the limited backlog waiting; no-op tasks/s."""
    label = f"{backend}-limited"
    url = pg_url if backend == "postgres" else sqlite_database(ctx, label)
    assert url is not None
    app = bench_app(url, ASYNC_TASK_PROCESSORS=PROCESSORS)
    procs: list[Process] = []
    try:
        if backend == "postgres":
            reset_tables(app)
        set_paused(app, NOOP, True)
        preload(app, count, NOOP)
        preload_limited(app, LIMITED_BACKLOG)
        settings = {"ASYNC_TASK_BATCH_SIZE": 10, "ASYNC_TASK_CONCURRENCY": concurrency(),
                    "ASYNC_TASK_PROCESSORS": ",".join(PROCESSORS)}
        procs = start_workers_paused(ctx, app, url, 1, label, NOOP, **settings)
        wait_for(lambda: resumed(app), 60, "resuming the no-op type")
        wait_for(lambda: succeeded_noops(app) >= count or _dead(procs), 60 + count / 50, "the no-op tasks")
        dead = _dead(procs)
        if dead is not None:
            raise RuntimeError(f"the worker died during the drain:\n{dead.log_tail()}")
        ok, seconds = noop_window(app)
        if ok != count:
            raise RuntimeError(f"{ok} of {count} no-op tasks succeeded")
        return ok / seconds
    finally:
        for proc in procs:
            proc.stop()
        dispose(app)


def resumed(app: Any) -> bool:
    """Resume the no-op type; False when SQLite's write lock is busy (the worker claims without pause)."""
    from sqlalchemy.exc import OperationalError

    try:
        set_paused(app, NOOP, False)
    except OperationalError as exc:
        if "database is locked" not in str(exc):
            raise
        return False
    return True


def succeeded_noops(app: Any) -> int:
    """No-op tasks in SUCCESS."""
    from webapp.extensions import db
    from webapp.tasks.models import AsyncTask

    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(AsyncTask).where(
                AsyncTask.task_type == NOOP, AsyncTask.status == "SUCCESS")) or 0)
        finally:
            db.session.remove()


def run(ctx: Context) -> None:
    """Plain and beside-a-limited-backlog drains, PostgreSQL and SQLite, one worker, batch 10.

    Quick runs skip it: two 10,000-task drains per backend do not fit a quick run's budget.
    """
    if ctx.quick:
        raise Skipped("full runs only (two drains of 10,000 tasks per backend)")
    count = 10_000
    with pg_database(NAME) as pg_url:
        for backend in ("postgres", "sqlite"):
            name = f"{backend}: no-op drain beside {LIMITED_BACKLOG:,} limited tasks waiting, ratio to the plain drain"
            plain = max(drain_once(ctx, backend, 1, 10, count, pg_url) for _ in range(REPEATS))
            try:
                limited = max(limited_drain_once(ctx, backend, count, pg_url) for _ in range(REPEATS))
            except TimeoutError as exc:  # a figure that says so, and the other backend still runs
                ctx.add(NAME, name, None, "x", f"the drain beside the backlog did not finish: {exc}; "
                                               f"plain {plain:,.0f}/s")
                continue
            ctx.add(NAME, name, limited / plain, "x",
                    f"{count:,} no-op tasks, 1 worker, batch 10, best of {REPEATS}: {limited:,.0f}/s beside "
                    f"the backlog, {plain:,.0f}/s plain (target >= {TARGET_RATIO})")
