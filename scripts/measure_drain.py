#!/usr/bin/env python3
"""Drain rate of 1, 2 and 4 ``flask tasks worker`` processes on this machine (docs/scaling.md).

For each worker count: an empty database of its own, N no-op tasks queued with
``AsyncTaskService.submit_many`` while their type is paused, the workers started and
registered, then the type resumed (with the wake-up NOTIFY), so every worker starts on the same
full queue. The rate is N / (last ``finished_at`` - first ``started_at``), read from the table.
The script also measures what bounds it: the round trip of one committed write (the fsync of
the WAL), and the CPU left over.

    .venv/bin/python scripts/measure_drain.py                  # 5,000 tasks; 1, 2, 4 workers
    .venv/bin/python scripts/measure_drain.py --tasks 2000 --workers 1 2 --redis

Needs PostgreSQL (``--admin-url``, default postgresql://postgres@127.0.0.1:5432/postgres) and,
with ``--redis``, Redis at ``--redis-url``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASK_TYPE = "DRAIN_NOOP"
TABLES = ("notification", "task_event", "audit_log", "async_task", "worker", "task_type_state",
          "api_token", "console_user")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per run (default 5000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts (default 1 2 4)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="threads per worker (default: the engine's ASYNC_TASK_CONCURRENCY)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per worker count; the median is kept")
    parser.add_argument("--admin-url", default=os.environ.get("DRAIN_PG_ADMIN_URL",
                                                            "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis", action="store_true", help="also take the per-task Redis locks")
    parser.add_argument("--redis-url", default=os.environ.get("DRAIN_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--pgbouncer-port", type=int, default=None,
                        help="run the workers and submits through a PgBouncer on this port of the same host "
                             "(LISTEN goes straight to PostgreSQL via ASYNC_TASK_LISTEN_DATABASE_URL)")
    return parser.parse_args()


def make_app(url: str, redis_url: str | None) -> Any:
    from webapp import create_app

    config: dict[str, Any] = {"TESTING": True, "SECRET_KEY": "drain", "SQLALCHEMY_DATABASE_URI": url,
                              "ASYNC_TASK_PROCESSORS": ["drain_processors"]}
    if redis_url:
        config["REDIS_URL"] = redis_url
    return create_app(config)


def create_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"taskdeck_drain_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(app: Any) -> None:
    from flask_migrate import upgrade

    from webapp.extensions import db

    with app.app_context():
        upgrade()
        db.engine.dispose()


def reset_and_preload(app: Any, count: int) -> float:
    """Empty the tables, pause the type, queue ``count`` tasks; returns seconds spent queueing."""
    from sqlalchemy import text

    from webapp.extensions import db
    from webapp.tasks.service import AsyncTaskService

    with app.app_context():
        db.session.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        db.session.commit()
        service = AsyncTaskService()
        service.pause_task_type(TASK_TYPE, actor="measure_drain")
        began = time.perf_counter()
        for start in range(0, count, 1000):
            size = min(1000, count - start)
            service.submit_many([{"task_type": TASK_TYPE, "payload": {"n": start + i}} for i in range(size)])
        elapsed = time.perf_counter() - began
        db.session.execute(text("ANALYZE async_task"))  # a planner that knows the queue is full
        db.session.commit()
        db.session.remove()
    return elapsed


def scalar(app: Any, statement: Any) -> Any:
    from webapp.extensions import db

    with app.app_context():
        try:
            return db.session.execute(statement).scalar()
        finally:
            db.session.remove()


def start_workers(url: str, count: int, concurrency: int | None, redis_url: str | None,
                  logs: Path, listen_url: str | None = None) -> list[subprocess.Popen[bytes]]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ASYNC_TASK_", "FLASK_")) and name not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"DATABASE_URL": url, "SECRET_KEY": "drain", "FLASK_APP": "webapp",
                "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'scripts'}",
                "ASYNC_TASK_PROCESSORS": "drain_processors", "DOTENV_PATH": str(logs / "no.env"),
                "ASYNC_TASK_POLL_INTERVAL": "0.5", "LOG_LEVEL": "WARNING"})
    if listen_url:
        env["ASYNC_TASK_LISTEN_DATABASE_URL"] = listen_url
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["ASYNC_TASK_REDIS_LOCK_PREFIX"] = f"drain-{os.getpid()}:"
    argv = [str(ROOT / ".venv" / "bin" / "flask"), "tasks", "worker"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    processes = []
    for index in range(count):
        log = (logs / f"worker-{index}.log").open("ab")
        processes.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL))
    return processes


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes (0 for one that is gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def backend_pids(app: Any) -> list[int]:
    """PostgreSQL server processes connected to this run's database (same machine only)."""
    from sqlalchemy import text

    from webapp.extensions import db

    with app.app_context():
        try:
            return [int(pid) for pid in db.session.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars()]
        finally:
            db.session.remove()


def one_run(app: Any, url: str, workers: int, args: argparse.Namespace, logs: Path,
            listen_url: str | None = None) -> dict[str, float]:
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.tasks.models import AsyncTask, Worker
    from webapp.tasks.service import AsyncTaskService

    reset_and_preload(app, args.tasks)
    processes = start_workers(url, workers, args.concurrency, args.redis_url if args.redis else None, logs,
                              listen_url)
    try:
        wait_for(lambda: scalar(app, select(func.count()).select_from(Worker)
                                .where(Worker.status == "RUNNING")) == workers, 60, "workers registered")
        time.sleep(1.0)  # every LISTEN connection up before the resume's NOTIFY
        worker_pids = [p.pid for p in processes]
        server_pids = backend_pids(app)
        busy_before, began = cpu_seconds(), time.monotonic()
        python_before, server_before = process_cpu_seconds(worker_pids), process_cpu_seconds(server_pids)
        with app.app_context():
            AsyncTaskService().resume_task_type(TASK_TYPE, actor="measure_drain")
            db.session.remove()
        wait_for(lambda: scalar(app, select(func.count()).select_from(AsyncTask)
                                .where(AsyncTask.status == "SUCCESS")) == args.tasks,
                 120 + args.tasks / 20, "the drain")
        wall, busy = time.monotonic() - began, cpu_seconds() - busy_before
        python_cpu = process_cpu_seconds(worker_pids) - python_before
        server_cpu = process_cpu_seconds(server_pids) - server_before
    finally:
        stop_workers(processes)
    with app.app_context():
        first, last = db.session.execute(select(func.min(AsyncTask.started_at), func.max(AsyncTask.finished_at))).one()
        threads = db.session.execute(select(func.max(Worker.concurrency))).scalar()
        repeated = db.session.execute(select(func.count()).select_from(AsyncTask)
                                      .where(AsyncTask.attempts != 1)).scalar()
        db.session.remove()
    if repeated:
        raise RuntimeError(f"{repeated} task(s) were claimed more than once")
    seconds = (last - first).total_seconds()
    per_task_ms = 1000.0 / args.tasks
    return {"rate": args.tasks / seconds, "seconds": seconds, "cpu": busy / wall, "threads": threads,
            "python_ms": python_cpu * per_task_ms, "server_ms": server_cpu * per_task_ms}


def via_port(url: str, port: int) -> str:
    """The same database URL on another port (a PgBouncer in front of the same server)."""
    from sqlalchemy.engine import make_url

    # PgBouncer 1.18 (Debian 12) keeps no prepared statements in transaction mode.
    bouncer = make_url(url).set(port=port).update_query_dict({"prepare_threshold": "none"})
    return bouncer.render_as_string(hide_password=False)


def commit_latency_ms(url: str, rounds: int = 300) -> float:
    """Median time of one single-row INSERT committed on its own (the WAL flush per commit)."""
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute("CREATE TABLE commit_probe (n int)")  # logged: each commit flushes the WAL
        times = []
        for n in range(rounds):
            began = time.perf_counter()
            connection.execute("INSERT INTO commit_probe VALUES (%s)", (n,))
            times.append(time.perf_counter() - began)
        connection.execute("DROP TABLE commit_probe")
    return statistics.median(times) * 1000


def main() -> int:
    args = parse_args()
    name, url = create_database(args.admin_url)
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / f"measure_drain_{os.getpid()}"
    logs.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "scripts"))
    work_url, listen_url = url, None
    if args.pgbouncer_port:
        work_url = via_port(url, args.pgbouncer_port)
        listen_url = url
    try:
        migrate(make_app(url, None))
        app = make_app(work_url, args.redis_url if args.redis else None)
        commit_ms = commit_latency_ms(url)
        print(f"# drain of {args.tasks} no-op tasks, {os.cpu_count()} CPUs, "
              f"{'PostgreSQL + Redis locks' if args.redis else 'PostgreSQL'}"
              f"{f' through PgBouncer :{args.pgbouncer_port}' if args.pgbouncer_port else ''}, "
              f"{datetime.now():%Y-%m-%d %H:%M}")
        print(f"# one committed single-row INSERT: {commit_ms:.2f} ms (median); "
              f"load average before: {os.getloadavg()[0]:.2f}")
        print()
        print("| worker processes | threads each | tasks/s (median) | runs | drain seconds | "
              "machine CPU busy | worker CPU ms/task | PostgreSQL CPU ms/task |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for workers in args.workers:
            runs = [one_run(app, work_url, workers, args, logs, listen_url) for _ in range(args.repeats)]
            rates = [run["rate"] for run in runs]
            median = statistics.median(rates)
            seconds = statistics.median(run["seconds"] for run in runs)
            cpu = statistics.median(run["cpu"] for run in runs)
            python_ms = statistics.median(run["python_ms"] for run in runs)
            server_ms = statistics.median(run["server_ms"] for run in runs)
            print(f"| {workers} | {int(runs[0]['threads'])} | {median:,.0f} | "
                  f"{', '.join(f'{r:,.0f}' for r in rates)} | {seconds:.2f} | {cpu:.2f} of {os.cpu_count()} cores | "
                  f"{python_ms:.2f} | {server_ms:.2f} |", flush=True)
        from webapp.extensions import db

        with app.app_context():
            db.engine.dispose()
    finally:
        drop_database(args.admin_url, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
