"""Helpers of the fault suite: reading outcomes through the service, the exactly-once checks,
a supervisor that restarts dead workers, gunicorn and an HTTP API server for one test.

Worker subprocesses, the private redis-server and the run log come from tests/proc_utils.py.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flask import Flask
from sqlalchemy import func, select

from tests.conftest import ROOT, wait_until
from tests.proc_processors import RUN_ACTION
from tests.proc_utils import ProcessPool, WorkerProcess, count_runs, read_run_log
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, queries
from webapp.tasks.models import AsyncTask, AuditEntry, TaskEvent

PROC_TYPE = "PROC_RECORD"
FAULT_PROCESSORS = "tests.proc_processors,tests.faults.processors"
HEARTBEAT = 0.5
STALE_THRESHOLD = 3 * HEARTBEAT
# Kinds of event after which a task may legitimately run again (its attempt did not end it).
RERUN_REASONS = ("RECOVERED", "RELEASED", "RETRY_SCHEDULED")
TERMINAL_KINDS = ("SUCCEEDED", "FAILED", "CANCELLED")


# -- reading and writing through the service ----------------------------------------------------


def submit(app: Flask, count: int, task_type: str = PROC_TYPE, created_by: str | None = None,
           **payload: Any) -> list[int]:
    """Queue ``count`` tasks of one type in one transaction; return their ids."""
    with app.app_context():
        try:
            tasks = AsyncTaskService().submit_many(
                [{"task_type": task_type, "payload": dict(payload), "created_by": created_by}
                 for _ in range(count)])
            return [task.id for task in tasks]
        finally:
            db.session.remove()


def status_counts(app: Flask) -> dict[str, int]:
    """How many tasks there are in each status."""
    with app.app_context():
        try:
            return queries.status_counts(db.session())
        finally:
            db.session.remove()


def task_state(app: Flask, task_id: int) -> dict[str, Any]:
    """Status, result, attempts, error and worker of one task, read fresh."""
    with app.app_context():
        try:
            task = AsyncTaskService().require_task(task_id)
            return {"status": task.status, "result": task.result, "attempts": task.attempts,
                    "error": task.error, "worker_id": task.worker_id, "next_run_at": task.next_run_at,
                    "recovery_count": task.recovery_count, "retry_count": task.retry_count}
        finally:
            db.session.remove()


def event_kinds(app: Flask, task_id: int) -> list[str]:
    """The kinds of the task's events, in order."""
    with app.app_context():
        try:
            return [event.kind for event in AsyncTaskService().events_for(task_id)]
        finally:
            db.session.remove()


def events_by_task(app: Flask) -> dict[int, list[tuple[str, int | None]]]:
    """task id -> [(kind, attempt), ...] in order, for every task."""
    with app.app_context():
        try:
            rows = db.session.execute(select(TaskEvent.task_id, TaskEvent.kind, TaskEvent.attempt)
                                      .order_by(TaskEvent.id))
            timeline: dict[int, list[tuple[str, int | None]]] = collections.defaultdict(list)
            for task_id, kind, attempt in rows:
                timeline[task_id].append((kind, attempt))
            return dict(timeline)
        finally:
            db.session.remove()


def committed_runs(app: Flask) -> collections.Counter[int]:
    """task id -> how many processor DB writes (``proc-run`` rows) were committed for it."""
    with app.app_context():
        try:
            ids = db.session.scalars(select(AuditEntry.target_id).where(AuditEntry.action == RUN_ACTION))
            return collections.Counter(int(task_id) for task_id in ids if task_id is not None)
        finally:
            db.session.remove()


def statuses_of(app: Flask, ids: list[int]) -> dict[int, str]:
    """task id -> status, for the given ids."""
    with app.app_context():
        try:
            rows = db.session.execute(select(AsyncTask.id, AsyncTask.status).where(AsyncTask.id.in_(ids)))
            return {task_id: status for task_id, status in rows}
        finally:
            db.session.remove()


def count_where(app: Flask, ids: list[int], status: str) -> int:
    """How many of ``ids`` are in ``status``."""
    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(AsyncTask)
                                         .where(AsyncTask.id.in_(ids), AsyncTask.status == status)) or 0)
        finally:
            db.session.remove()


def worker_statuses(app: Flask) -> dict[int, str]:
    """pid -> status of every registered worker row."""
    with app.app_context():
        try:
            return {w.pid: w.status for w in AsyncTaskService().workers(include_stopped=True)}
        finally:
            db.session.remove()


# -- waiting ------------------------------------------------------------------------------------


def wait_for(pool: ProcessPool | None, predicate: Callable[[], Any], timeout: float, message: str,
             interval: float = 0.1) -> Any:
    """``wait_until`` that also fails at once if a worker of ``pool`` died on its own."""

    def check() -> Any:
        if pool is not None:
            pool.assert_alive()
        return predicate()

    return wait_until(check, timeout=timeout, interval=interval, message=message)


def wait_for_workers(app: Flask, pool: ProcessPool | None, count: int, timeout: float = 30) -> None:
    """Wait until ``count`` workers have registered and are RUNNING."""
    wait_for(pool, lambda: sum(1 for s in worker_statuses(app).values() if s == "RUNNING") >= count,
             timeout=timeout, message=f"{count} workers RUNNING")


def first_start_by(run_log: Path, predicate: Callable[[Any], bool]) -> Any:
    """The first ``start`` record of the run log that matches ``predicate``, or None."""
    return next((r for r in read_run_log(run_log) if r.event == "start" and predicate(r)), None)


# -- the checks ---------------------------------------------------------------------------------


@dataclass
class ExactlyOnceReport:
    """What the exactly-once check found, for the test's printed figures."""

    tasks: int
    reruns: dict[int, int]  # task id -> starts, for tasks started more than once
    reasons: collections.Counter[str]  # RECOVERED / RELEASED / RETRY_SCHEDULED / LATE_RESULT_REFUSED


def assert_succeeded_exactly_once(app: Flask, run_log: Path, ids: list[int],
                                  writers: list[int] | None = None) -> ExactlyOnceReport:
    """Every task is SUCCESS with exactly one SUCCEEDED event; each writer (default: every task)
    committed exactly one processor row, from the attempt whose result was kept; every task
    started at least once, and each extra start follows an event that ended the earlier attempt
    without finishing the task (recovered, released or retry scheduled): nothing ran twice
    without a reason, and no effect was committed twice."""
    writers = ids if writers is None else writers
    statuses = statuses_of(app, ids)
    wrong = {task_id: status for task_id, status in statuses.items() if status != "SUCCESS"}
    assert not wrong, f"{len(wrong)} task(s) not SUCCESS: {dict(list(wrong.items())[:20])}"
    assert set(statuses) == set(ids), f"tasks missing: {sorted(set(ids) - set(statuses))[:20]}"

    commits = committed_runs(app)
    bad_commits = {task_id: commits.get(task_id, 0) for task_id in writers if commits.get(task_id, 0) != 1}
    assert not bad_commits, f"writer tasks without exactly one committed run: {dict(list(bad_commits.items())[:20])}"
    assert not set(commits) - set(writers), "committed rows of tasks that should write none"

    timeline = events_by_task(app)
    records = read_run_log(run_log)
    starts = count_runs(records, "start")
    never = sorted(set(ids) - set(starts))
    assert not never, f"tasks never started: {never[:20]}"
    reruns: dict[int, int] = {}
    reasons: collections.Counter[str] = collections.Counter()
    for task_id in ids:
        kinds = [kind for kind, _ in timeline.get(task_id, [])]
        assert kinds.count("SUCCEEDED") == 1, (task_id, kinds)
        assert sum(kinds.count(kind) for kind in TERMINAL_KINDS) == 1, (task_id, kinds)
        interruptions = sum(kinds.count(kind) for kind in RERUN_REASONS)
        assert starts[task_id] <= interruptions + 1, (
            f"task {task_id} started {starts[task_id]} times with only {interruptions} interruption(s): "
            f"{kinds}")
        if starts[task_id] > 1:
            reruns[task_id] = starts[task_id]
        reasons.update(kind for kind in kinds if kind in (*RERUN_REASONS, "LATE_RESULT_REFUSED"))
    return ExactlyOnceReport(len(ids), reruns, reasons)


def assert_logs_clean(text: str, *forbidden: str) -> None:
    """None of ``forbidden`` appears in ``text`` (the line is shown if one does)."""
    for needle in forbidden:
        for line in text.splitlines():
            assert needle not in line, f"{needle!r} found in the logs: {line}"


# -- a supervisor restarting dead workers -------------------------------------------------------


@dataclass
class Supervisor:
    """Keeps ``slots`` workers running, restarting any that exits, as systemd or a Procfile
    runner would. Runs in a thread of the test process; ``stop()`` it before the pool."""

    pool: ProcessPool
    env: dict[str, str]
    slots: int = 2
    concurrency: int = 4
    deaths: list[tuple[str, int, int]] = field(default_factory=list)  # (name, pid, exit code)
    current: list[WorkerProcess] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: int = 0

    def start(self) -> Supervisor:
        """Start the workers and the watching thread."""
        self.current = [self._spawn() for _ in range(self.slots)]
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> WorkerProcess:
        self._started += 1
        return self.pool.start_worker(f"s{self._started}", self.env, concurrency=self.concurrency)

    def _watch(self) -> None:
        while not self._stop.wait(0.1):
            for index, worker in enumerate(self.current):
                code = worker.process.poll()
                if code is not None:
                    worker.expected_exit = True  # died on purpose of the scenario: not a test failure
                    self.deaths.append((worker.name, worker.pid, code))
                    self.current[index] = self._spawn()

    def stop(self) -> None:
        """Stop restarting (the pool's shutdown then stops the workers)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# -- PostgreSQL -----------------------------------------------------------------------------------


def terminate_connections(pg_url: str) -> int:
    """``pg_terminate_backend`` every other connection to the test database; returns how many."""
    import psycopg

    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()
    return sum(1 for (ok,) in rows if ok)


# -- gunicorn -------------------------------------------------------------------------------------


@dataclass
class Gunicorn:
    """``gunicorn -w N -b 127.0.0.1:PORT wsgi:app`` from the repository root (its
    gunicorn.conf.py applies; the command line wins where both set a value)."""

    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]

    @classmethod
    def start(cls, tmp_path: Path, port: int, env: dict[str, str], workers: int = 2) -> Gunicorn:
        """Start it; the caller waits for readiness."""
        log_path = tmp_path / "gunicorn.log"
        log_file = log_path.open("ab")
        scrubbed = {name: value for name, value in env.items()
                    if not name.startswith("GUNICORN_") and name not in ("WEB_CONCURRENCY", "PORT", "HOST")}
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}",
             "wsgi:app"],
            cwd=ROOT, env=scrubbed, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return cls(port, log_path, process, log_file)

    @property
    def pid(self) -> int:
        return self.process.pid

    def worker_pids(self) -> set[int]:
        """Pids of the master's children: gunicorn's workers."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return set()
        return {int(pid) for pid in text.split()}

    def log_text(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (graceful), SIGKILL the master and its workers if that takes too long."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in self.worker_pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait(timeout=10)
        self.log_file.close()


# -- an HTTP server for the JSON API in this process -------------------------------------------


@contextlib.contextmanager
def serve_in_thread(app: Flask) -> Iterator[str]:
    """Serve ``app`` with werkzeug's threaded server on a free local port; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="api-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
