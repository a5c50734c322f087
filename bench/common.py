"""Shared pieces of the benchmarks: databases of their own, worker processes, figures, statistics.

Every benchmark gets its own PostgreSQL database (``bench_<name>_<run id>``, created and dropped
here), its own Redis key prefix and its own temporary SQLite files, so benchmarks never see each
other's rows and never touch the tests' databases.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
PROCESSORS = "bench.processors"


class Skipped(Exception):
    """A benchmark cannot run here (a module not there yet, a tool missing); says why."""


@dataclass
class Figure:
    """One measured number, as printed in the table and written to docs/benchmarks.md."""

    benchmark: str
    name: str
    value: float | None
    unit: str
    note: str = ""

    def shown(self) -> str:
        """The value formatted for people (thousands separators, sensible decimals)."""
        if self.value is None:
            return "-"
        if abs(self.value) >= 100:
            return f"{self.value:,.0f}"
        if abs(self.value) >= 10:
            return f"{self.value:,.1f}"
        return f"{self.value:,.2f}"


@dataclass
class Context:
    """What every benchmark is given: quick or full, a scratch folder, where to put figures."""

    quick: bool
    scratch: Path
    figures: list[Figure] = field(default_factory=list)
    shared: dict[str, Any] = field(default_factory=dict)

    def add(self, benchmark: str, name: str, value: float | None, unit: str, note: str = "") -> Figure:
        """Record a figure and print it at once (long runs show progress)."""
        figure = Figure(benchmark, name, value, unit, note)
        self.figures.append(figure)
        print(f"  {benchmark:>10} | {name:<48} | {figure.shown():>12} {unit}"
              + (f"  ({note})" if note else ""), flush=True)
        return figure


# -- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile (0-100) by linear interpolation; ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- databases -------------------------------------------------------------------------------


def pg_url_for(name: str) -> str:
    """The URL of database ``name`` on the benchmark PostgreSQL server."""
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def pg_database(benchmark: str, migrate_schema: bool = True) -> Iterator[str]:
    """A fresh PostgreSQL database for one benchmark, migrated; dropped afterwards."""
    import psycopg

    name = f"bench_{benchmark}_{RUN_ID}".lower()
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        raise Skipped(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}") from None
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = pg_url_for(name)
    try:
        if migrate_schema:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_SQLITE_TEMPLATE: dict[str, Path] = {}


def sqlite_database(ctx: Context, label: str) -> str:
    """A fresh migrated SQLite file in the scratch folder (copied from a migrated template)."""
    template = _SQLITE_TEMPLATE.get("path")
    if template is None:
        template = ctx.scratch / "template.sqlite3"
        migrate(f"sqlite:///{template}")
        _SQLITE_TEMPLATE["path"] = template
    target = ctx.scratch / f"{label}-{uuid.uuid4().hex[:6]}.sqlite3"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def migrate(url: str) -> None:
    """Bring a database to the newest schema with the project's migrations."""
    from flask_migrate import upgrade

    from webapp import create_app
    from webapp.extensions import db

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url,
                      "ASYNC_TASK_PROCESSORS": [PROCESSORS]})
    with app.app_context():
        upgrade()
        logging.getLogger("alembic").setLevel(logging.WARNING)  # once is enough per run
        db.engine.dispose()


def bench_app(url: str, **overrides: Any) -> Any:
    """An app in this process for submitting and reading (no consumer started)."""
    from webapp import create_app

    config: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": "bench-secret",
        "SQLALCHEMY_DATABASE_URI": url,
        "ASYNC_TASK_PROCESSORS": [PROCESSORS],
        "ASYNC_TASK_CONSUMER_ENABLED": False,
        "ASYNC_TASK_REDIS_LOCK_PREFIX": redis_prefix("app"),
    }
    config.update(overrides)
    return create_app(config)


def dispose(app: Any) -> None:
    """Close an in-process app's database connections."""
    from webapp.extensions import db

    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def psql_connect(url: str) -> Any:
    """A plain autocommit psycopg connection to a benchmark database (bulk loading, reading)."""
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


def redis_prefix(benchmark: str) -> str:
    """The Redis key prefix of one benchmark in this run."""
    return f"bench-{RUN_ID}-{benchmark}:"


def clear_redis_prefix(prefix: str) -> None:
    """Delete the keys a benchmark left under its prefix (best effort)."""
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    except Exception:
        pass


def redis_available() -> bool:
    """Whether the local Redis answers."""
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except Exception:
        return False


# -- processes -------------------------------------------------------------------------------


def engine_default(name: str) -> Any:
    """The engine's built-in default of a setting (what a user gets without configuring it)."""
    from webapp.config import SETTINGS

    return SETTINGS[name][1]


def app_env(url: str, **settings: Any) -> dict[str, str]:
    """Environment for a ``flask``/``gunicorn`` process of the project on database ``url``."""
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("ASYNC_TASK_") or name in ("REDIS_URL", "DATABASE_URL"):
            del env[name]
    env.update({
        "DATABASE_URL": url,
        "ASYNC_TASK_PROCESSORS": PROCESSORS,
        "SECRET_KEY": "bench-secret-5f0e9d8c7b6a5f4e3d2c1b0a9f8e",
        "DOTENV_PATH": os.devnull,
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),  # the shipped default
    })
    for name, value in settings.items():
        if value is not None:
            env[name] = str(value)
    return env


class Process:
    """A child process (worker, web server) whose output goes to a log file in the scratch folder."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.popen = subprocess.Popen(argv, env=env, cwd=str(ROOT), stdout=self._log,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the process's output (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (graceful stop), then SIGKILL after ``timeout``."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


def start_worker(ctx: Context, url: str, label: str, **settings: Any) -> Process:
    """``flask tasks worker`` in a subprocess with the given ASYNC_TASK_* settings."""
    argv = [sys.executable, "-m", "flask", "--app", "webapp", "tasks", "worker"]
    return Process(argv, app_env(url, **settings), ctx.scratch / f"worker-{label}-{uuid.uuid4().hex[:4]}.log")


def start_gunicorn(ctx: Context, url: str, label: str, workers: int = 4, **settings: Any) -> tuple[Process, int]:
    """``gunicorn wsgi:app`` on a free loopback port, consumer off; returns once every worker
    has booted and ``/healthz`` answers (workers load the app after the port opens)."""
    port = free_port()
    # --log-level info only for gunicorn's own "Booting worker" lines; no access log (a cost
    # the product does not impose).
    argv = [sys.executable, "-m", "gunicorn", "wsgi:app", "-w", str(workers), "-b", f"127.0.0.1:{port}",
            "--log-level", "info", "--timeout", "120"]
    env = app_env(url, ASYNC_TASK_CONSUMER_ENABLED="false", **settings)
    server = Process(argv, env, ctx.scratch / f"gunicorn-{label}-{uuid.uuid4().hex[:4]}.log")

    def ready() -> bool:
        if not server.alive():
            raise RuntimeError(f"gunicorn exited early:\n{server.log_tail()}")
        if server.log_path.read_text(errors="replace").count("Booting worker") < workers:
            return False
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    try:
        wait_for(ready, 90, f"gunicorn on port {port}", interval=0.2)
        time.sleep(1.0)  # a worker logs "Booting" before it has imported the app
    except Exception:
        server.stop()
        raise
    return server, port


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (``VmRSS`` in /proc/<pid>/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until truthy; raise ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def scratch_dir() -> Path:
    """A fresh temporary folder for one run's SQLite files and logs."""
    return Path(tempfile.mkdtemp(prefix=f"bench-{RUN_ID}-"))


def module_available(name: str) -> bool:
    """Whether a module of the project (e.g. ``webapp.api``) can be imported."""
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


BULK_TASKS_SQL = """
INSERT INTO async_task (task_type, status, priority, payload, result, retry_count, max_retry_count,
    retry_strategy, retry_interval, retry_jitter, created_at, updated_at, started_at, finished_at,
    next_run_at, attempts, recovery_count)
SELECT %(task_type)s, %(status)s, 0, jsonb_build_object('n', i), NULL, 0, 3, 'EXPONENTIAL', 60, 0,
       now() - interval '1 hour', now() - interval '1 hour',
       CASE WHEN %(finished)s THEN now() - interval '1 hour' END,
       CASE WHEN %(finished)s THEN now() - interval '1 hour' END,
       now() - interval '1 hour', CASE WHEN %(finished)s THEN 1 ELSE 0 END, 0
FROM generate_series(1, %(count)s) AS i
"""


def bulk_insert_tasks(url: str, count: int, status: str, task_type: str = "BENCH_NOOP") -> None:
    """Write ``count`` tasks of one status straight into PostgreSQL (setting up a data set fast)."""
    if count <= 0:
        return
    finished = status in ("SUCCESS", "FAILURE", "CANCELLED")
    with psql_connect(url) as conn:
        conn.execute(BULK_TASKS_SQL, {"task_type": task_type, "status": status, "finished": finished,
                                      "count": count})
