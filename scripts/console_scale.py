"""Console at scale: page times and query plans with a million tasks in PostgreSQL.

    .venv/bin/python scripts/console_scale.py                  # load 1,000,000 tasks, measure, drop
    .venv/bin/python scripts/console_scale.py --keep           # keep the database for another run
    .venv/bin/python scripts/console_scale.py --reuse --explain  # measure again, print every plan

The data set is written in SQL (``INSERT ... SELECT generate_series``): a bulk load of history,
not live state changes. 20 task types; 70 % SUCCESS, 10 % FAILURE (with an error), 5 %
CANCELLED, 10 % PENDING, 5 % RETRYING (the waiting ones due a day ahead, so the set holds still),
created over 30 days, plus a SUBMITTED event per task and a finishing event per finished one, and
a notification per hundred tasks. Pages are read through the Flask test client as a logged-in
admin (server time, no HTTP), round robin, after a warm-up. ``--explain`` records the SQL each
page runs (SQLAlchemy cursor events) and prints ``EXPLAIN (ANALYZE, BUFFERS)`` of each statement.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import event  # noqa: E402

from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402

ADMIN_URL = os.environ.get("CONSOLE_SCALE_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_DB = "console_scale"
USERNAME = "scale-admin"
PASSWORD = "scale-password-1"

LOAD_TASKS = """
INSERT INTO async_task (task_type, status, priority, payload, result, retry_count, max_retry_count,
    retry_strategy, retry_interval, retry_jitter, created_by, created_at, updated_at, started_at,
    finished_at, next_run_at, error, attempts, recovery_count, worker_id)
SELECT 'TYPE_' || (i %% 20), s.status, (i %% 7) - 3,
       jsonb_build_object('n', i, 'customer', 'customer-' || (i %% 1000)),
       CASE WHEN s.status = 'SUCCESS' THEN jsonb_build_object('ok', true) END,
       CASE WHEN s.status = 'RETRYING' THEN 1 ELSE 0 END, 3, 'EXPONENTIAL', 60, 0,
       'user' || (i %% 50) || '@example.com',
       t.created, t.created + interval '2 seconds',
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE') THEN t.created + interval '1 second' END,
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE', 'CANCELLED') THEN t.created + interval '2 seconds' END,
       CASE WHEN s.status IN ('PENDING', 'RETRYING') THEN now() + interval '1 day' ELSE t.created END,
       CASE WHEN s.status = 'FAILURE' THEN 'RuntimeError: simulated failure ' || i END,
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE', 'RETRYING') THEN 1 ELSE 0 END, 0,
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE') THEN 'scale-host-1' END
FROM generate_series(1, %(rows)s) AS i,
     LATERAL (SELECT CASE WHEN i %% 100 < 70 THEN 'SUCCESS' WHEN i %% 100 < 80 THEN 'FAILURE'
                          WHEN i %% 100 < 85 THEN 'CANCELLED' WHEN i %% 100 < 95 THEN 'PENDING'
                          ELSE 'RETRYING' END AS status) AS s,
     LATERAL (SELECT now() - interval '30 days' * (%(rows)s - i) / %(rows)s AS created) AS t
"""

LOAD_EVENTS = """
INSERT INTO task_event (task_id, at, kind, from_status, to_status, attempt, worker_id, message)
SELECT id, created_at, 'SUBMITTED', NULL, 'PENDING', NULL, NULL, NULL FROM async_task
UNION ALL
SELECT id, finished_at,
       CASE status WHEN 'SUCCESS' THEN 'SUCCEEDED' WHEN 'FAILURE' THEN 'FAILED' ELSE 'CANCELLED' END,
       CASE WHEN status = 'CANCELLED' THEN 'PENDING' ELSE 'PROCESSING' END, status, attempts,
       worker_id, error
FROM async_task WHERE status IN ('SUCCESS', 'FAILURE', 'CANCELLED')
"""

# One notification per hundred finished tasks: mostly SENT, some FAILED / SKIPPED.
LOAD_NOTIFICATIONS = """
INSERT INTO notification (task_id, type, recipient, subject, content, status, attempts, max_attempts,
    next_attempt_at, last_error, created_at, updated_at, sent_at)
SELECT id, 'EMAIL', created_by, 'Task ' || id || ' ' || status, 'body',
       CASE WHEN id % 7 = 0 THEN 'FAILED' WHEN id % 11 = 0 THEN 'SKIPPED' ELSE 'SENT' END,
       1, 8, finished_at, CASE WHEN id % 7 = 0 THEN 'SMTP 550 mailbox unavailable' END,
       finished_at, finished_at, CASE WHEN id % 7 <> 0 AND id % 11 <> 0 THEN finished_at END
FROM async_task WHERE status IN ('SUCCESS', 'FAILURE') AND id % 100 < 2
"""


def database_url(name: str) -> str:
    """The scratch database's URL (same server as the admin URL)."""
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def database_exists(name: str) -> bool:
    """Whether the scratch database is already there (for ``--reuse``)."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def create_database(name: str) -> None:
    """A fresh, migrated scratch database."""
    from flask_migrate import upgrade

    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url(name)})
    with app.app_context():
        upgrade()
        db.engine.dispose()


def drop_database(name: str) -> None:
    """Remove the scratch database."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def load(name: str, rows: int) -> float:
    """Bulk-load ``rows`` tasks, their events and some notifications; seconds taken."""
    began = time.perf_counter()
    with psycopg.connect(database_url(name), autocommit=True) as conn:
        conn.execute(LOAD_TASKS, {"rows": rows})
        conn.execute(LOAD_EVENTS)
        conn.execute(LOAD_NOTIFICATIONS)
        for table in ("async_task", "task_event", "notification"):
            conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - began


def migrate(name: str) -> None:
    """Bring a reused database up to the newest migration (e.g. after adding indexes)."""
    from flask_migrate import upgrade

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url(name)})
    with app.app_context():
        upgrade()
        db.engine.dispose()


def make_app(name: str) -> Any:
    """The console app over the scratch database, with an admin user."""
    from webapp.accounts.models import User
    from webapp.accounts.users import create_user

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url(name), "SECRET_KEY": "console-scale-5f0e9d8c7b6a5f4e3d2c1b0a",
                      "ASYNC_TASK_PROCESSORS": ["webapp.examples"], "SESSION_COOKIE_SECURE": False,
                      "ASYNC_TASK_CONSUMER_ENABLED": False})
    with app.app_context():
        if db.session.scalar(db.select(User).where(User.username == USERNAME)) is None:
            create_user(USERNAME, PASSWORD, "admin")
        db.session.remove()
    return app


def login(app: Any) -> Any:
    """A test client logged in through the real login form."""
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    answer = client.post("/login", data={"username": USERNAME, "password": PASSWORD,
                                         "csrf_token": token.group(1) if token else ""})
    if answer.status_code != 302:
        raise SystemExit(f"login failed: {answer.status_code} {answer.get_data(as_text=True)[:300]}")
    return client


def pick_ids(name: str) -> tuple[int, int]:
    """(a FAILURE task near the middle, the id in the middle to continue a deep keyset page at)."""
    with psycopg.connect(database_url(name)) as conn:
        top = conn.execute("SELECT max(id) FROM async_task").fetchone()[0]  # type: ignore[index]
        middle = top // 2
        failed = conn.execute("SELECT id FROM async_task WHERE status = 'FAILURE' AND id <= %s "
                              "ORDER BY id DESC LIMIT 1", (middle,)).fetchone()[0]  # type: ignore[index]
    return int(failed), int(middle)


def pages_to_measure(name: str) -> dict[str, str]:
    """Label -> path of every page measured."""
    failed_id, middle = pick_ids(name)
    return {
        "/": "/",
        "/ (htmx poll)": "/#overview-live",
        "/tasks": "/tasks",
        "/tasks?status=FAILURE": "/tasks?status=FAILURE",
        "/tasks?task_type=TYPE_7": "/tasks?task_type=TYPE_7",
        "/tasks?status=PENDING&task_type=TYPE_7": "/tasks?status=PENDING&task_type=TYPE_7",
        "/tasks?created_by=user7@example.com": "/tasks?created_by=user7%40example.com",
        "/tasks?created_before=(15 days ago)": "/tasks?created_before=" + _days_ago(15),
        "/tasks deep keyset page": f"/tasks?cursor={middle}",
        "/tasks/<id>": f"/tasks/{failed_id}",
        "/task-types": "/task-types",
        "/notifications": "/notifications",
        "/notifications?status=FAILED": "/notifications?status=FAILED",
    }


def _days_ago(days: int) -> str:
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def fetch(client: Any, path: str) -> Any:
    """GET a page; ``path#target`` asks for that htmx fragment."""
    path, _, target = path.partition("#")
    headers = {"HX-Request": "true", "HX-Target": target} if target else {}
    return client.get(path, headers=headers)


def measure(client: Any, pages: dict[str, str], samples: int) -> dict[str, list[float]]:
    """GET each page ``samples`` times round robin after a warm-up; milliseconds per request."""
    missing = [label for label, path in pages.items() if fetch(client, path).status_code == 404]
    for label in missing:
        print(f"skipped (404, no such page yet): {label}")
        del pages[label]
    times: dict[str, list[float]] = {label: [] for label in pages}
    for _ in range(3):
        for path in pages.values():
            fetch(client, path)
    for _ in range(samples):
        for label, path in pages.items():
            began = time.perf_counter()
            answer = fetch(client, path)
            times[label].append((time.perf_counter() - began) * 1000)
            if answer.status_code != 200:
                raise SystemExit(f"GET {path}: {answer.status_code} {answer.get_data(as_text=True)[:300]}")
    return times


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


@contextmanager
def recorded_statements(app: Any) -> Iterator[list[tuple[str, Any]]]:
    """Every (statement, parameters) the app's engine runs inside the block."""
    found: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        found.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", record)


def explain_pages(app: Any, client: Any, pages: dict[str, str], name: str) -> None:
    """Print EXPLAIN (ANALYZE, BUFFERS) of every statement each page runs."""
    skip = re.compile(r"^\s*(SELECT 1$|BEGIN|COMMIT|ROLLBACK|UPDATE console_user|INSERT INTO audit_log)", re.I)
    with psycopg.connect(database_url(name)) as conn:
        for label, path in pages.items():
            with recorded_statements(app) as statements:
                fetch(client, path)
            print(f"\n===== {label}: {len(statements)} statements")
            for statement, parameters in statements:
                if skip.match(statement):
                    continue
                print("\n--", " ".join(statement.split())[:400], "|", parameters)
                plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).fetchall()
                for (line,) in plan:
                    print("   ", line)
            conn.rollback()


def main() -> None:
    """Load (or reuse) the data set, measure every page, optionally print the plans."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--db", default=DEFAULT_DB, help="scratch database name")
    parser.add_argument("--reuse", action="store_true", help="reuse the database if it exists")
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--explain", action="store_true", help="print the plan of every statement")
    parser.add_argument("--only", nargs="*", help="labels (substrings) of the pages to measure")
    args = parser.parse_args()

    if args.reuse and database_exists(args.db):
        migrate(args.db)
        print(f"reusing database {args.db}")
    else:
        create_database(args.db)
        seconds = load(args.db, args.rows)
        print(f"loaded {args.rows:,} tasks into {args.db} in {seconds:.1f} s")
    app = make_app(args.db)
    try:
        client = login(app)
        pages = pages_to_measure(args.db)
        if args.only:
            pages = {k: v for k, v in pages.items() if any(part in k for part in args.only)}
        if args.explain:
            explain_pages(app, client, pages, args.db)
        load_before = os.getloadavg()[0]
        times = measure(client, pages, args.samples)
        print(f"\nload average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
              f"{os.cpu_count()} CPUs")
        print(f"{'page':48} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  (n={args.samples})")
        for label, values in times.items():
            print(f"{label:48} {statistics.median(values):8.1f} {percentile(values, 95):8.1f} "
                  f"{max(values):8.1f}")
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()
        if not (args.keep or args.reuse):
            drop_database(args.db)


if __name__ == "__main__":
    main()
