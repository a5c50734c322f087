"""Acceptance of the engine with real ``flask tasks worker`` processes (issue 2, SPEC §5–§6).

Each test starts worker subprocesses on the run's PostgreSQL database (or a SQLite file) and
Redis, submits tasks from this process through ``AsyncTaskService``, and then checks what
actually ran: the processors (tests/proc_processors.py) append a line per attempt to a run log
(outside any transaction) and write an ``audit_log`` row inside the task's transaction.

Figures (drain rate, recovery time after ``kill -9``) are printed; see them with
``.venv/bin/pytest -q -rP tests/test_worker_processes.py``.
"""

from __future__ import annotations

import collections
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select, update

from tests.conftest import wait_until
from tests.proc_processors import RUN_ACTION
from tests.proc_utils import (
    ProcessPool,
    RedisServer,
    RunRecord,
    WorkerProcess,
    count_runs,
    read_run_log,
    worker_environment,
)
from webapp.tasks import AsyncTaskService, queries
from webapp.tasks.models import AsyncTask, AuditEntry, TaskEvent, Worker, utcnow

PROC_TYPE = "PROC_RECORD"
HEARTBEAT = 0.5
POLL = 0.2
STALE_THRESHOLD = 3 * HEARTBEAT
PROCESSORS = ["tests.proc_processors"]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may kill and restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    return tmp_path / "runs.log"


@pytest.fixture
def lock_prefix() -> str:
    return f"proctest-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def pg_app(make_app: Callable[..., Flask]) -> Flask:
    """The submitting app on PostgreSQL + Redis (creating it empties the tables)."""
    return make_app("postgres", redis=True, ASYNC_TASK_PROCESSORS=PROCESSORS)


@pytest.fixture
def pg_env(pg_url: str, redis_url: str, lock_prefix: str, run_log: Path,
           tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Builds a worker environment on PostgreSQL + the shared Redis, with overrides."""

    def build(**settings: Any) -> dict[str, str]:
        settings.setdefault("redis_url", redis_url)
        return worker_environment(pg_url, lock_prefix=lock_prefix, run_log=run_log,
                                  tmp_path=tmp_path, **settings)

    return build


# -- helpers reading and writing through the service -------------------------------------------


def submit(app: Flask, count: int, **payload: Any) -> list[int]:
    """Queue ``count`` PROC_RECORD tasks in one transaction; return their ids."""
    with app.app_context():
        tasks = AsyncTaskService().submit_many(
            [{"task_type": PROC_TYPE, "payload": dict(payload)} for _ in range(count)])
        return [task.id for task in tasks]


def status_counts(app: Flask) -> dict[str, int]:
    with app.app_context():
        return queries.status_counts(AsyncTaskService().session)


def task_state(app: Flask, task_id: int) -> dict[str, Any]:
    """Status, result, attempts and error of one task, read fresh."""
    with app.app_context():
        task = AsyncTaskService().require_task(task_id)
        return {"status": task.status, "result": task.result, "attempts": task.attempts,
                "error": task.error, "worker_id": task.worker_id}


def events(app: Flask, task_id: int) -> list[dict[str, Any]]:
    """The task's timeline as plain dicts."""
    with app.app_context():
        return [{"kind": e.kind, "at": e.at, "attempt": e.attempt, "worker_id": e.worker_id,
                 "message": e.message}
                for e in AsyncTaskService().events_for(task_id)]


def event_kinds_of_all(app: Flask) -> collections.Counter[str]:
    with app.app_context():
        from webapp.extensions import db

        rows = db.session.execute(select(TaskEvent.kind, func.count()).group_by(TaskEvent.kind))
        return collections.Counter({kind: count for kind, count in rows})


def attempts_histogram(app: Flask) -> collections.Counter[int]:
    """How many tasks needed 1, 2, ... attempts."""
    with app.app_context():
        from webapp.extensions import db

        rows = db.session.execute(select(AsyncTask.attempts, func.count()).group_by(AsyncTask.attempts))
        return collections.Counter({attempts: count for attempts, count in rows})


def committed_runs(app: Flask) -> list[tuple[int, int, int]]:
    """(task id, attempt, pid) of every processor DB write that was committed."""
    with app.app_context():
        from webapp.extensions import db

        rows = db.session.scalars(select(AuditEntry).where(AuditEntry.action == RUN_ACTION))
        return sorted((int(r.target_id), r.detail["attempt"], r.detail["pid"]) for r in rows)


def worker_statuses(app: Flask) -> dict[int, str]:
    """pid -> status of every registered worker row."""
    with app.app_context():
        return {w.pid: w.status for w in AsyncTaskService().workers(include_stopped=True)}


def wait_for_workers(app: Flask, pool: ProcessPool, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` workers have registered and are RUNNING (a start took over 30 s at load 17)."""

    def ready() -> bool:
        pool.assert_alive()
        return sum(1 for status in worker_statuses(app).values() if status == "RUNNING") >= count

    wait_until(ready, timeout=timeout, interval=0.1, message=f"{count} workers RUNNING")


def wait_for(pool: ProcessPool, predicate: Callable[[], Any], timeout: float, message: str,
             interval: float = 0.05) -> Any:
    """``wait_until`` that also fails at once if a worker died on its own."""

    def check() -> Any:
        pool.assert_alive()
        return predicate()

    return wait_until(check, timeout=timeout, interval=interval, message=message)


def first_start(run_log: Path, task_id: int) -> RunRecord | None:
    return next((r for r in read_run_log(run_log) if r.event == "start" and r.task_id == task_id), None)


def assert_each_ran_once(run_log: Path, app: Flask, ids: list[int],
                         writers: list[int] | None = None) -> None:
    """Every task started once and returned once; each of ``writers`` (default: all) committed
    its one DB write; nothing else ran."""
    records = read_run_log(run_log)
    starts, dones = count_runs(records, "start"), count_runs(records, "done")
    twice = sorted(task_id for task_id, n in starts.items() if n != 1)
    assert not twice, f"tasks started more than once: {twice[:20]}"
    assert set(starts) == set(ids), f"never started: {sorted(set(ids) - set(starts))[:20]}"
    assert dones == starts
    writes = collections.Counter(task_id for task_id, _, _ in committed_runs(app))
    assert writes == collections.Counter({task_id: 1 for task_id in (ids if writers is None else writers)})
    assert attempts_histogram(app) == collections.Counter({1: len(ids)})


def assert_all_succeeded(app: Flask, total: int) -> None:
    counts = status_counts(app)
    assert counts["SUCCESS"] == total, counts
    assert counts["PROCESSING"] == 0, counts
    assert sum(counts.values()) == total, counts


def other(pool: ProcessPool, worker: WorkerProcess) -> WorkerProcess:
    return next(w for w in pool.workers if w is not worker)


# -- scenarios ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_three_workers_drain_1000_tasks_each_exactly_once(pg_app: Flask, pg_env, pool: ProcessPool,
                                                          run_log: Path) -> None:
    env = pg_env()
    for index in range(3):
        pool.start_worker(f"w{index}", env)
    wait_for_workers(pg_app, pool, 3)

    started = time.monotonic()
    # Half write in their own transaction, half do no database work (the batched finish).
    writers = submit(pg_app, 500)
    ids = writers + submit(pg_app, 500, write_db=False)
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == 1000, timeout=120, interval=0.2,
             message="1000 tasks SUCCESS")
    elapsed = time.monotonic() - started

    assert_all_succeeded(pg_app, 1000)
    assert_each_ran_once(run_log, pg_app, ids, writers)
    by_pid = collections.Counter(r.pid for r in read_run_log(run_log) if r.event == "done")
    assert set(by_pid) == {w.pid for w in pool.workers}, f"not every worker took part: {by_pid}"
    logs = pool.all_logs()
    assert "Traceback" not in logs
    print(f"\nFIGURE drain: 1000 tasks, 3 workers x 4 threads, PostgreSQL + Redis: {elapsed:.2f} s "
          f"({1000 / elapsed:.0f} tasks/s); per worker {dict(by_pid)}")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill_9_mid_task_is_recovered_by_another_worker(pg_app: Flask, pg_env, pool: ProcessPool,
                                                         run_log: Path) -> None:
    env = pg_env()
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(pg_app, pool, 2)
    [task_id] = submit(pg_app, 1, seconds=3, slow_attempts=[1])
    start = wait_for(pool, lambda: first_start(run_log, task_id), timeout=10, message="task started")
    victim = pool.by_pid(start.pid)
    survivor = other(pool, victim)
    time.sleep(0.3)  # well inside the 3 s of work

    victim.send(signal.SIGKILL)
    killed_wall, killed = time.time(), time.monotonic()
    wait_for(pool, lambda: task_state(pg_app, task_id)["status"] == "SUCCESS", timeout=20,
             interval=0.02, message="task SUCCESS after the kill")
    recovery = time.monotonic() - killed

    assert victim.wait_exit(5) == -signal.SIGKILL
    timeline = events(pg_app, task_id)
    kinds = [e["kind"] for e in timeline]
    assert kinds.count("RECOVERED") == 1, timeline
    assert kinds.count("SUCCEEDED") == 1, timeline
    recovered = next(e for e in timeline if e["kind"] == "RECOVERED")
    assert f"-{victim.pid}-" in recovered["worker_id"]
    assert "stopped heartbeating" in recovered["message"]
    # The killed attempt started and never finished; the survivor ran it once, to the end, and
    # that run (only) committed. (Its attempt number is 2 unless a claim was given back unrun.)
    runs = [(r.event, r.attempt, r.pid) for r in read_run_log(run_log)]
    assert runs[0] == ("start", 1, victim.pid), runs
    rerun = runs[1][1]
    assert runs[1:] == [("start", rerun, survivor.pid), ("done", rerun, survivor.pid)], (runs, timeline)
    state = task_state(pg_app, task_id)
    assert state["result"] == {"pid": survivor.pid, "attempt": rerun}
    assert committed_runs(pg_app) == [(task_id, rerun, survivor.pid)]
    assert worker_statuses(pg_app)[victim.pid] == "DEAD"

    def seconds_after_kill(kind: str) -> float:
        return next(e["at"] for e in timeline if e["kind"] == kind).timestamp() - killed_wall

    print(f"\nFIGURE recovery after kill -9 (heartbeat {HEARTBEAT}s, poll {POLL}s): RECOVERED "
          f"+{seconds_after_kill('RECOVERED'):.2f}s, SUCCEEDED +{seconds_after_kill('SUCCEEDED'):.2f}s, "
          f"observed SUCCESS {recovery:.2f}s after the kill")
    # Stale threshold + one poll, plus slack for the sweep period and the re-run itself.
    assert recovery <= STALE_THRESHOLD + POLL + 1.5, f"recovery took {recovery:.2f}s"


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("write_db", [True, False], ids=["processor-writes", "no-db-work"])
def test_paused_worker_late_result_is_refused_by_fencing_token(pg_app: Flask, pg_env, pool: ProcessPool,
                                                                run_log: Path, write_db: bool) -> None:
    env = pg_env()
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(pg_app, pool, 2)
    [task_id] = submit(pg_app, 1, seconds=2.5, slow_attempts=[1], write_db=write_db)
    start = wait_for(pool, lambda: first_start(run_log, task_id), timeout=10, message="task started")
    paused = pool.by_pid(start.pid)
    finisher = other(pool, paused)

    paused.send(signal.SIGSTOP)
    try:
        wait_for(pool, lambda: task_state(pg_app, task_id)["status"] == "SUCCESS", timeout=20,
                 message="task re-claimed and finished by the other worker")
        finished = task_state(pg_app, task_id)["result"]
        assert finished["pid"] == finisher.pid and finished["attempt"] > 1, events(pg_app, task_id)
        assert "RECOVERED" in [e["kind"] for e in events(pg_app, task_id)]
    finally:
        paused.send(signal.SIGCONT)

    wait_for(pool, lambda: "LATE_RESULT_REFUSED" in [e["kind"] for e in events(pg_app, task_id)],
             timeout=15, message="the paused worker's late result refused")
    state = task_state(pg_app, task_id)
    assert state["status"] == "SUCCESS"
    assert state["result"] == finished, "the stale result overwrote the task"
    refused = next(e for e in events(pg_app, task_id) if e["kind"] == "LATE_RESULT_REFUSED")
    assert refused["attempt"] == 1 and f"-{paused.pid}-" in refused["worker_id"]
    # The stale attempt ran to its end, but its DB write was rolled back with its refused result.
    runs = read_run_log(run_log)
    assert ("done", 1, paused.pid) in [(r.event, r.attempt, r.pid) for r in runs]
    assert committed_runs(pg_app) == ([(task_id, finished["attempt"], finisher.pid)] if write_db else [])
    assert "late result refused" in paused.log_text()
    # The paused worker rejoined and keeps working.
    wait_for(pool, lambda: worker_statuses(pg_app).get(paused.pid) == "RUNNING", timeout=10,
             message="paused worker back to RUNNING")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_redis_lock_key_deleted_mid_task(pg_app: Flask, pg_env, pool: ProcessPool, run_log: Path,
                                         redis_url: str, lock_prefix: str) -> None:
    env = pg_env()
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(pg_app, pool, 2)
    [long_id] = submit(pg_app, 1, seconds=2)
    wait_for(pool, lambda: first_start(run_log, long_id), timeout=10, message="long task started")

    client = redis.Redis.from_url(redis_url)
    key = f"{lock_prefix}lock:task:{long_id}"
    with pg_app.app_context():
        token = AsyncTaskService().require_task(long_id).claim_token
    assert client.get(key) == token.encode()
    assert client.delete(key) == 1
    ids = [long_id, *submit(pg_app, 40, seconds=0.02)]

    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == len(ids), timeout=30,
             message="all tasks SUCCESS")
    assert_all_succeeded(pg_app, len(ids))
    assert_each_ran_once(run_log, pg_app, ids)
    assert event_kinds_of_all(pg_app)["RECOVERED"] == 0
    assert f"Redis lock missing for running task(s) [{long_id}]" in pool.all_logs()
    assert client.keys(f"{lock_prefix}lock:task:*") == []  # every lock released after its task
    client.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_redis_outage_mid_run_loses_and_repeats_nothing(pg_app: Flask, pg_env, pool: ProcessPool,
                                                        run_log: Path, private_redis: RedisServer) -> None:
    env = pg_env(redis_url=private_redis.url)
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(pg_app, pool, 2)
    writers = submit(pg_app, 100, seconds=0.05)
    ids = writers + submit(pg_app, 100, seconds=0.05, write_db=False)
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] >= 30, timeout=30, message="30 tasks done")

    private_redis.kill()
    assert status_counts(pg_app)["SUCCESS"] < 200, "the outage came too late to be mid-run"
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == 200, timeout=60,
             message="all 200 tasks SUCCESS without Redis")
    assert "REDIS UNAVAILABLE" in pool.all_logs()
    # Idle workers must not mistake the silence for recovery while Redis is still down.
    time.sleep(4 * HEARTBEAT)
    assert "Redis is reachable again" not in pool.all_logs()

    # Redis comes back: the workers notice and keep going with per-task locks.
    private_redis.start()
    more = submit(pg_app, 40, seconds=0.02)
    writers += more
    ids += more
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == len(ids), timeout=30,
             message="tasks after Redis came back SUCCESS")
    wait_for(pool, lambda: "Redis is reachable again" in pool.all_logs(), timeout=10,
             message="workers noticed Redis is back")
    assert_all_succeeded(pg_app, len(ids))
    assert_each_ran_once(run_log, pg_app, ids, writers)


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigterm_finishes_the_running_task_within_grace(pg_app: Flask, pg_env, pool: ProcessPool,
                                                         run_log: Path) -> None:
    worker = pool.start_worker("a", pg_env(ASYNC_TASK_SHUTDOWN_GRACE=10))
    wait_for_workers(pg_app, pool, 1)
    [task_id] = submit(pg_app, 1, seconds=1.5)
    wait_for(pool, lambda: first_start(run_log, task_id), timeout=10, message="task started")

    worker.send(signal.SIGTERM)
    stopped = time.monotonic()
    assert worker.wait_exit(15) == 0
    assert time.monotonic() - stopped < 10
    state = task_state(pg_app, task_id)
    assert state["status"] == "SUCCESS" and state["attempts"] == 1
    assert committed_runs(pg_app) == [(task_id, 1, worker.pid)]
    assert worker_statuses(pg_app)[worker.pid] == "STOPPED"
    assert "received SIGTERM" in worker.log_text()
    assert "released 0 task(s)" in worker.log_text()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigterm_with_short_grace_releases_the_task_to_pending(pg_app: Flask, pg_env, pool: ProcessPool,
                                                                run_log: Path) -> None:
    worker = pool.start_worker("a", pg_env(ASYNC_TASK_SHUTDOWN_GRACE=0.5))
    wait_for_workers(pg_app, pool, 1)
    [task_id] = submit(pg_app, 1, seconds=30, slow_attempts=[1])
    wait_for(pool, lambda: first_start(run_log, task_id), timeout=10, message="task started")

    worker.send(signal.SIGTERM)
    stopped = time.monotonic()
    assert worker.wait_exit(10) == 0
    assert time.monotonic() - stopped < 5
    state = task_state(pg_app, task_id)
    assert state["status"] == "PENDING" and state["worker_id"] is None
    assert [e["kind"] for e in events(pg_app, task_id)][-1] == "RELEASED"
    assert worker_statuses(pg_app)[worker.pid] == "STOPPED"
    assert "released 1 task(s)" in worker.log_text()
    assert committed_runs(pg_app) == []  # the interrupted attempt's DB write went with it

    # Nothing lost: the next worker runs it (quickly, attempt 2).
    successor = pool.start_worker("b", pg_env())
    wait_for(pool, lambda: task_state(pg_app, task_id)["status"] == "SUCCESS", timeout=20,
             message="released task finished by the next worker")
    assert committed_runs(pg_app) == [(task_id, 2, successor.pid)]
    runs = [(r.event, r.attempt) for r in read_run_log(run_log)]
    assert runs == [("start", 1), ("start", 2), ("done", 2)]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_workers_on_one_sqlite_file_drain_300_tasks(make_app: Callable[..., Flask], pool: ProcessPool,
                                                         run_log: Path, lock_prefix: str,
                                                         tmp_path: Path) -> None:
    app = make_app("sqlite", ASYNC_TASK_PROCESSORS=PROCESSORS)
    env = worker_environment(app.config["SQLALCHEMY_DATABASE_URI"], redis_url=None,
                             lock_prefix=lock_prefix, run_log=run_log, tmp_path=tmp_path)
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(app, pool, 2)

    started = time.monotonic()
    writers = submit(app, 150)
    ids = writers + submit(app, 150, write_db=False)
    wait_for(pool, lambda: status_counts(app)["SUCCESS"] == 300, timeout=90, interval=0.2,
             message="300 tasks SUCCESS on SQLite")
    elapsed = time.monotonic() - started

    assert_all_succeeded(app, 300)
    assert_each_ran_once(run_log, app, ids, writers)
    logs = pool.all_logs()
    assert "database is locked" not in logs
    assert "Traceback" not in logs
    by_pid = collections.Counter(r.pid for r in read_run_log(run_log) if r.event == "done")
    print(f"\nFIGURE drain: 300 tasks, 2 workers x 4 threads, SQLite file: {elapsed:.2f} s "
          f"({300 / elapsed:.0f} tasks/s); per worker {dict(by_pid)}")


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_recovery_sweep_is_not_stalled_by_a_worker_frozen_mid_transaction(pg_app: Flask,
                                                                          pg_url: str) -> None:
    """A worker stopped (SIGSTOP) inside its heartbeat transaction keeps its worker row locked;
    the sweep must skip that lock, not wait on it, and still recover the worker's task."""
    import psycopg

    with pg_app.app_context():
        service = AsyncTaskService()
        service.register_worker("frozen-worker", "host", 1, 1, HEARTBEAT)
        [task_id] = [t.id for t in service.submit_many([{"task_type": PROC_TYPE, "payload": {}}])]
        assert [t.id for t in service.claim_due_tasks("frozen-worker", 1)] == [task_id]
        from webapp.extensions import db

        db.session.execute(update(Worker).values(last_heartbeat_at=utcnow() - timedelta(seconds=10)))
        db.session.commit()
    frozen = psycopg.connect(pg_url)
    try:
        frozen.execute("UPDATE worker SET busy = 1 WHERE id = 'frozen-worker'")  # left uncommitted
        outcome: dict[str, list[int]] = {}

        def sweep() -> None:
            with pg_app.app_context():
                outcome["recovered"] = AsyncTaskService().recover_orphans(3600, HEARTBEAT)

        sweeper = threading.Thread(target=sweep, daemon=True)
        sweeper.start()
        sweeper.join(5)
        assert not sweeper.is_alive(), "the recovery sweep waited on the frozen worker's row lock"
    finally:
        frozen.rollback()
        frozen.close()
    assert outcome["recovered"] == [task_id]
    assert task_state(pg_app, task_id)["status"] == "PENDING"
