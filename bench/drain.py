"""1. Drain rate: N no-op tasks pre-loaded, then 1 or 2 ``flask tasks worker`` processes.

The tasks are queued with ``AsyncTaskService.submit_many`` while their type is paused, the
workers are started and registered, then the type is resumed (with a wake-up NOTIFY on
PostgreSQL), so every worker starts on the same queue. The rate is tasks / (last
``finished_at`` - first ``started_at``), read from the table: claimed, run and finished.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text

from .common import (
    Context,
    Process,
    bench_app,
    clear_redis_prefix,
    dispose,
    engine_default,
    pg_database,
    redis_available,
    redis_prefix,
    sqlite_database,
    start_worker,
    wait_for,
)

NAME = "drain"
TABLES = ("notification", "task_event", "audit_log", "async_task", "worker", "task_type_state",
          "api_token", "console_user")
NOOP = "BENCH_NOOP"
ASYNC_NOOP = "BENCH_ASYNC_NOOP"  # bench/async_processors.py, loaded only for its own runs
ASYNC_PROCESSORS = ["bench.processors", "bench.async_processors"]
# Idle workers re-poll this often while the type is paused; once draining, the engine claims
# again on its own as threads free up, so this does not pace the drain.
START_POLL_INTERVAL = 0.5
HEADLINE_REPEATS = 2


def TUNED(batch: int) -> dict[str, Any]:  # noqa: N802 (reads as a constant in the run table)
    """Worker settings for short tasks: prefetch a whole batch, 8 threads."""
    return {"ASYNC_TASK_PREFETCH": batch, "ASYNC_TASK_CONCURRENCY": 8}


def concurrency() -> int:
    """Worker threads per process in the drain runs: the engine's default."""
    return int(engine_default("ASYNC_TASK_CONCURRENCY"))


def reset_tables(app: Any) -> None:
    """Empty every engine table (PostgreSQL: TRUNCATE; SQLite runs use a fresh file instead)."""
    from webapp.extensions import db

    with app.app_context():
        db.session.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        db.session.commit()


def set_paused(app: Any, task_type: str, paused: bool) -> None:
    """Pause or resume a task type (workers skip paused types when claiming)."""
    from webapp.extensions import db
    from webapp.tasks.models import TaskTypeState, utcnow
    from webapp.tasks.service import WAKE_CHANNEL

    with app.app_context():
        state = db.session.get(TaskTypeState, task_type)
        if state is None:
            db.session.add(TaskTypeState(task_type=task_type, paused=paused, changed_at=utcnow(),
                                         changed_by="bench"))
        else:
            state.paused = paused
        if not paused and db.engine.dialect.name == "postgresql":
            db.session.execute(text(f"NOTIFY {WAKE_CHANNEL}"))
        db.session.commit()


def preload(app: Any, count: int, task_type: str = NOOP, chunk: int = 1000) -> float:
    """Queue ``count`` tasks with ``submit_many`` in chunks; returns tasks/s of the loading."""
    from webapp.extensions import db
    from webapp.tasks.service import AsyncTaskService

    began = time.perf_counter()
    with app.app_context():
        service = AsyncTaskService()
        done = 0
        while done < count:
            size = min(chunk, count - done)
            service.submit_many([{"task_type": task_type, "payload": {"n": done + i}} for i in range(size)])
            db.session.remove()
            done += size
    return count / (time.perf_counter() - began)


def count_waiting(app: Any) -> int:
    """Tasks not yet in a terminal status."""
    from webapp.extensions import db
    from webapp.tasks.models import TERMINAL_STATUSES, AsyncTask

    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(AsyncTask)
                                         .where(AsyncTask.status.not_in(TERMINAL_STATUSES))) or 0)
        finally:
            db.session.remove()


def count_running_workers(app: Any) -> int:
    """Registered workers with status RUNNING."""
    from webapp.extensions import db
    from webapp.tasks.models import Worker

    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(Worker)
                                         .where(Worker.status == "RUNNING")) or 0)
        finally:
            db.session.remove()


def _as_utc(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def drain_window(app: Any) -> tuple[int, int, float]:
    """(succeeded, not succeeded, seconds from first start to last finish) of the table."""
    from webapp.extensions import db
    from webapp.tasks.models import AsyncTask

    with app.app_context():
        try:
            first, last = db.session.execute(
                select(func.min(AsyncTask.started_at), func.max(AsyncTask.finished_at))).one()
            ok = db.session.scalar(select(func.count()).select_from(AsyncTask)
                                   .where(AsyncTask.status == "SUCCESS")) or 0
            total = db.session.scalar(select(func.count()).select_from(AsyncTask)) or 0
        finally:
            db.session.remove()
    seconds = (_as_utc(last) - _as_utc(first)).total_seconds()
    return int(ok), int(total - ok), seconds


def start_workers_paused(ctx: Context, app: Any, url: str, workers: int, label: str,
                         task_type: str = NOOP, **settings: Any) -> list[Process]:
    """Start ``workers`` worker processes while ``task_type`` is paused; wait until registered."""
    set_paused(app, task_type, True)
    settings.setdefault("ASYNC_TASK_POLL_INTERVAL", START_POLL_INTERVAL)
    procs = [start_worker(ctx, url, f"{label}-{i}", **settings) for i in range(workers)]
    try:
        wait_for(lambda: count_running_workers(app) >= workers or _dead(procs), 60,
                 f"{workers} worker(s) to register")
        dead = _dead(procs)
        if dead:
            raise RuntimeError(f"worker exited at start:\n{dead.log_tail()}")
        time.sleep(1.0)  # let each worker's LISTEN connection come up before the wake-up NOTIFY
    except Exception:
        for proc in procs:
            proc.stop()
        raise
    return procs


def _dead(procs: list[Process]) -> Process | None:
    return next((p for p in procs if not p.alive()), None)


def wait_drained(app: Any, procs: list[Process], count: int, on_tick: Any = None) -> None:
    """Wait until no task is waiting or running (fails if a worker dies or it takes too long)."""
    timeout = 60 + count / 50
    deadline = time.monotonic() + timeout
    while True:
        if count_waiting(app) == 0:
            return
        dead = _dead(procs)
        if dead is not None:
            raise RuntimeError(f"a worker died during the drain:\n{dead.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain of {count} tasks not done after {timeout:.0f}s")
        if on_tick is not None:
            on_tick()
        time.sleep(0.2)


class BackgroundWriter(threading.Thread):
    """Writes while the workers drain, like the console and API would: one ``submit_task`` and
    one page of ``list_tasks`` every ``tick`` seconds. Remembers every error it met."""

    def __init__(self, app: Any, tick: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.tick = tick
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.submitted = 0

    def run(self) -> None:
        from webapp.extensions import db
        from webapp.tasks.service import AsyncTaskService

        with self.app.app_context():
            service = AsyncTaskService()
            while not self.stop.wait(self.tick):
                try:
                    service.submit_task(NOOP, {"from": "writer"})
                    self.submitted += 1
                    service.list_tasks(limit=50)
                except Exception as exc:  # counted and reported, not fatal
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                finally:
                    db.session.remove()


def count_succeeded(app: Any) -> int:
    """Tasks in SUCCESS."""
    from webapp.extensions import db
    from webapp.tasks.models import AsyncTask

    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(AsyncTask)
                                         .where(AsyncTask.status == "SUCCESS")) or 0)
        finally:
            db.session.remove()


def drain_once(ctx: Context, backend: str, workers: int, batch: int, count: int,
               pg_url: str | None, redis: bool = False, writes: bool = False, task_type: str = NOOP,
               **settings: Any) -> float:
    """One drain run; returns tasks/s (first start to last finish). ``settings`` go to the workers.

    With ``writes``, a ``BackgroundWriter`` submits and reads until the pre-loaded tasks are
    done; its tasks are drained and counted too, and any error it or a worker met (such as
    "database is locked") fails the run.
    """
    label = f"{backend}-{workers}w-b{batch}"
    url = pg_url if backend == "postgres" else sqlite_database(ctx, label)
    assert url is not None
    prefix = redis_prefix(f"{NAME}-{label}")
    overrides: dict[str, Any] = {"REDIS_URL": None}
    if redis:
        overrides = {"REDIS_URL": "redis://127.0.0.1:6379/0", "ASYNC_TASK_REDIS_LOCK_PREFIX": prefix}
    if task_type == ASYNC_NOOP:
        overrides["ASYNC_TASK_PROCESSORS"] = ",".join(ASYNC_PROCESSORS)
    app = bench_app(url, **({"ASYNC_TASK_PROCESSORS": ASYNC_PROCESSORS} if task_type == ASYNC_NOOP else {}))
    procs: list[Process] = []
    try:
        if backend == "postgres":
            reset_tables(app)
        set_paused(app, task_type, True)
        preload(app, count, task_type)
        worker_settings: dict[str, Any] = {"ASYNC_TASK_BATCH_SIZE": batch,
                                           "ASYNC_TASK_CONCURRENCY": concurrency()}
        worker_settings.update({k: v for k, v in overrides.items() if v is not None})
        worker_settings.update({k: v for k, v in settings.items() if k != "writes"})
        procs = start_workers_paused(ctx, app, url, workers, label, task_type, **worker_settings)
        writer = BackgroundWriter(app) if writes else None
        set_paused(app, task_type, False)
        if writer is not None:
            writer.start()
            try:
                wait_for(lambda: count_succeeded(app) >= count or _dead(procs), 60 + count / 50,
                         "the pre-loaded tasks")
            finally:
                writer.stop.set()
                writer.join(30)
        wait_drained(app, procs, count)
        ok, not_ok, seconds = drain_window(app)
        expected = count + (writer.submitted if writer else 0)
        if ok != expected:
            raise RuntimeError(f"{ok} of {expected} tasks succeeded ({not_ok} did not)")
        locked = [p.log_path.name for p in procs if "database is locked" in p.log_path.read_text(errors="replace")]
        if writer is not None and (writer.errors or locked):
            raise RuntimeError(f"errors while writing: {writer.errors[:3]}; 'database is locked' in {locked}")
        return ok / seconds
    finally:
        for proc in procs:
            proc.stop()
        dispose(app)
        if redis:
            clear_redis_prefix(prefix)


def run(ctx: Context) -> None:
    """Drain rate on PostgreSQL and SQLite, 1 and 2 workers, batch 10 and 100."""
    count = 1_000 if ctx.quick else 10_000
    threads = concurrency()
    if ctx.quick:
        runs = [("postgres", 1, 10, False, {}), ("postgres", 2, 10, False, {}),
                ("sqlite", 1, 10, False, {}), ("sqlite", 1, 10, False, {"writes": True}),
                ("postgres", 1, 10, False, TUNED(10))]
    else:
        runs = [("postgres", 1, 10, False, {}), ("postgres", 1, 100, False, {}),
                ("postgres", 2, 10, False, {}), ("postgres", 2, 100, False, {}),
                ("sqlite", 1, 10, False, {}), ("sqlite", 1, 100, False, {}),
                ("sqlite", 2, 10, False, {}), ("sqlite", 2, 100, False, {}),
                ("postgres", 1, 10, True, {}), ("sqlite", 1, 10, False, {"writes": True}),
                ("postgres", 1, 10, False, {"LOG_LEVEL": "WARNING"}),
                # Tuned for short tasks: claim a batch ahead of free threads (prefetch), more threads.
                ("postgres", 1, 10, False, TUNED(10)), ("postgres", 1, 100, False, TUNED(100)),
                ("postgres", 2, 100, False, TUNED(100)), ("sqlite", 1, 100, False, TUNED(100))]
    results: dict[tuple[str, int, int], float] = ctx.shared.setdefault("drain", {})
    with pg_database(NAME) as pg_url:
        for backend, workers, batch, redis, settings in runs:
            extra = ""
            if redis:
                if not redis_available():
                    ctx.add(NAME, f"{backend} + Redis locks, {workers} worker, batch {batch}", None,
                            "tasks/s", "skipped: Redis is not reachable")
                    continue
                extra = " + Redis locks"
            if settings.get("writes"):
                extra += " + concurrent submits and reads (~100/s)"
            elif settings.get("ASYNC_TASK_PREFETCH"):
                extra += f" tuned (prefetch {settings['ASYNC_TASK_PREFETCH']}, 8 threads)"
            elif settings:
                extra += ", " + ", ".join(f"{k}={v}" for k, v in settings.items())
            name = f"{backend}{extra}, {workers} worker{'s' if workers > 1 else ''}, batch {batch}"
            headline = backend == "postgres" and workers == 1 and not redis and not settings
            # The headline runs are compared with pgqueuer's: both are best of HEADLINE_REPEATS,
            # which takes out a stall caused by other work on the machine.
            repeats = HEADLINE_REPEATS if headline and not ctx.quick else 1
            rates = [drain_once(ctx, backend, workers, batch, count, pg_url, redis=redis, **settings)
                     for _ in range(repeats)]
            rate = max(rates)
            if not redis and not settings:
                results[(backend, workers, batch)] = rate
            elif not redis and settings.get("ASYNC_TASK_PREFETCH"):
                ctx.shared.setdefault("drain_tuned", {})[(backend, workers, batch)] = rate
            note = f"{count:,} no-op tasks, {settings.get('ASYNC_TASK_CONCURRENCY', threads)} threads/worker"
            if repeats > 1:
                note += f"; best of {repeats}: " + ", ".join(f"{r:,.0f}" for r in rates)
            ctx.add(NAME, name, rate, "tasks/s", note)
        run_async_noop(ctx, count, pg_url, quick=ctx.quick)


def run_async_noop(ctx: Context, count: int, pg_url: str, quick: bool) -> None:
    """The no-op drain with ``async def process`` (docs/async-processors.md), next to this run's thread no-op."""
    threads = ctx.shared.get("drain", {})
    for batch in (10,) if quick else (10, 100):
        rate = drain_once(ctx, "postgres", 1, batch, count, pg_url, task_type=ASYNC_NOOP)
        note = (f"{count:,} async no-op tasks, up to {engine_default('ASYNC_TASK_ASYNC_CONCURRENCY')} "
                f"at a time on the worker's event loop")
        thread_rate = threads.get(("postgres", 1, batch))
        if thread_rate:
            note += f"; {rate / thread_rate:.2f}x the thread no-op drain of this run ({thread_rate:,.0f}/s)"
        ctx.add(NAME, f"postgres async no-op, 1 worker, batch {batch}", rate, "tasks/s", note)
