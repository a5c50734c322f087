"""4. Console at scale: page times with 1,000,000 tasks in PostgreSQL and a worker running.

The tasks (20 types, mixed statuses, spread over 30 days) and two events each are written by
``INSERT ... SELECT generate_series`` in SQL: a bulk load of a data set, not a state change
of live tasks. Waiting tasks are scheduled a day ahead so the data set holds still, while a
thread here submits no-op tasks (about 200/s) that the worker runs, so the pages are measured
with workers busy. The console is served by gunicorn and read by one logged-in client.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

from .common import (
    Context,
    Process,
    Skipped,
    bench_app,
    dispose,
    module_available,
    percentile,
    pg_database,
    psql_connect,
    start_gunicorn,
    start_worker,
)

NAME = "console"
USERNAME = "bench-admin"
PASSWORD = "bench-password-1"

LOAD_TASKS_SQL = """
INSERT INTO async_task (task_type, status, priority, payload, result, retry_count, max_retry_count,
    retry_strategy, retry_interval, retry_jitter, created_by, created_at, updated_at, started_at,
    finished_at, next_run_at, error, attempts, recovery_count, worker_id)
SELECT 'TYPE_' || (i % 20),
       s.status,
       (i % 7) - 3,
       jsonb_build_object('n', i, 'customer', 'customer-' || (i % 1000), 'amount', i % 500),
       CASE WHEN s.status = 'SUCCESS' THEN jsonb_build_object('ok', true, 'n', i) END,
       CASE WHEN s.status = 'RETRYING' THEN 1 ELSE 0 END, 3, 'EXPONENTIAL', 60, 0,
       'user' || (i % 50) || '@example.com',
       t.created, t.created + interval '2 seconds',
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE') THEN t.created + interval '1 second' END,
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE', 'CANCELLED') THEN t.created + interval '2 seconds' END,
       CASE WHEN s.status IN ('PENDING', 'RETRYING') THEN now() + interval '1 day' ELSE t.created END,
       CASE WHEN s.status = 'FAILURE' THEN 'RuntimeError: simulated failure ' || i END,
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE', 'RETRYING') THEN 1 ELSE 0 END, 0,
       CASE WHEN s.status IN ('SUCCESS', 'FAILURE') THEN 'bench-host-1-abc' END
FROM generate_series(1, {count}) AS i,
     LATERAL (SELECT CASE WHEN i % 100 < 70 THEN 'SUCCESS' WHEN i % 100 < 80 THEN 'FAILURE'
                          WHEN i % 100 < 85 THEN 'CANCELLED' WHEN i % 100 < 95 THEN 'PENDING'
                          ELSE 'RETRYING' END AS status) AS s,
     LATERAL (SELECT now() - interval '30 days' * ({count} - i) / {count} AS created) AS t
"""

LOAD_EVENTS_SQL = """
INSERT INTO task_event (task_id, at, kind, from_status, to_status, attempt, worker_id, message)
SELECT id, created_at, 'SUBMITTED', NULL, 'PENDING', NULL, NULL, NULL FROM async_task
UNION ALL
SELECT id, finished_at,
       CASE status WHEN 'SUCCESS' THEN 'SUCCEEDED' WHEN 'FAILURE' THEN 'FAILED' ELSE 'CANCELLED' END,
       CASE WHEN status = 'CANCELLED' THEN 'PENDING' ELSE 'PROCESSING' END, status, attempts, worker_id,
       error
FROM async_task WHERE status IN ('SUCCESS', 'FAILURE', 'CANCELLED')
"""


def load(url: str, count: int) -> float:
    """Bulk-load ``count`` tasks and their events; returns seconds taken."""
    began = time.perf_counter()
    with psql_connect(url) as conn:
        conn.execute(LOAD_TASKS_SQL.replace("{count}", str(int(count))).encode())
        conn.execute(LOAD_EVENTS_SQL)
        conn.execute("VACUUM ANALYZE async_task")
        conn.execute("VACUUM ANALYZE task_event")
    return time.perf_counter() - began


def create_login(app: Any) -> None:
    """An admin console user (through ``webapp.accounts.users``)."""
    from webapp.extensions import db

    try:
        from webapp.accounts.users import create_user
    except ImportError:
        raise Skipped("webapp.accounts.users is not there yet (no way to make a login)") from None
    with app.app_context():
        create_user(USERNAME, PASSWORD, "admin")
        db.session.remove()


def login(base: str) -> Any:
    """A ``requests`` session logged in to the console."""
    import requests

    session = requests.Session()
    page = session.get(f"{base}/login", timeout=30)
    if page.status_code == 404:
        raise Skipped("the console has no /login page yet")
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text) or \
        re.search(r'value="([^"]+)"[^>]*name="csrf_token"', page.text)
    data = {"username": USERNAME, "password": PASSWORD}
    if match:
        data["csrf_token"] = match.group(1)
    answer = session.post(f"{base}/login", data=data, allow_redirects=False, timeout=30)
    if answer.status_code not in (302, 303):
        raise RuntimeError(f"login answered {answer.status_code}: {answer.text[:300]}")
    return session


def _submitter(app: Any, stop: threading.Event, per_tick: int = 20, tick: float = 0.1) -> None:
    """Keep the worker busy: ``per_tick`` no-op tasks every ``tick`` seconds until ``stop``."""
    from webapp.extensions import db
    from webapp.tasks.service import AsyncTaskService

    with app.app_context():
        service = AsyncTaskService()
        while not stop.wait(tick):
            service.submit_many([{"task_type": "BENCH_NOOP", "payload": {}} for _ in range(per_tick)])
            db.session.remove()


def pick_ids(url: str) -> tuple[int, int]:
    """(id of a FAILURE task near the middle, id in the middle to continue a deep keyset page at)."""
    with psql_connect(url) as conn:
        top = conn.execute("SELECT max(id) FROM async_task").fetchone()[0]
        middle = top // 2
        failed = conn.execute("SELECT id FROM async_task WHERE status = 'FAILURE' AND id <= %s "
                              "ORDER BY id DESC LIMIT 1", (middle,)).fetchone()[0]
    return int(failed), int(middle)


def measure_pages(session: Any, base: str, pages: dict[str, str], samples: int) -> dict[str, list[float]]:
    """GET each page ``samples`` times, round robin (noise spreads evenly); ms per request."""
    times: dict[str, list[float]] = {label: [] for label in pages}
    for _ in range(3):  # warm-up: templates compiled, connections pooled, caches filled
        for path in pages.values():
            session.get(base + path, timeout=60)
    for _ in range(samples):
        for label, path in pages.items():
            start = time.perf_counter()
            answer = session.get(base + path, timeout=60, allow_redirects=False)
            elapsed = (time.perf_counter() - start) * 1000
            if answer.status_code != 200:
                raise RuntimeError(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
            times[label].append(elapsed)
    return times


def run(ctx: Context) -> None:
    """p50/p95 of the console's main pages over a large task table."""
    if not module_available("webapp.console"):
        raise Skipped("webapp.console is not there yet")
    count = 20_000 if ctx.quick else 1_000_000
    samples = 8 if ctx.quick else 40
    with pg_database(NAME) as url:
        seconds = load(url, count)
        ctx.add(NAME, f"bulk load of {count:,} tasks + events (SQL)", seconds, "s", "setup, not a product figure")
        app = bench_app(url)
        worker: Process | None = None
        server: Process | None = None
        stop = threading.Event()
        feeder = threading.Thread(target=_submitter, args=(app, stop), daemon=True)
        try:
            create_login(app)
            worker = start_worker(ctx, url, "console")
            # Plain HTTP on loopback: the session cookie must not be marked Secure or it is never sent.
            server, port = start_gunicorn(ctx, url, "console", workers=2, SESSION_COOKIE_SECURE="false")
            base = f"http://127.0.0.1:{port}"
            session = login(base)
            failed_id, middle = pick_ids(url)
            pages = {
                "/": "/",
                "/tasks (first page)": "/tasks",
                "/tasks?status=FAILURE": "/tasks?status=FAILURE",
                "/tasks?task_type=TYPE_7": "/tasks?task_type=TYPE_7",
                "/tasks deep keyset page (cursor at the middle)": f"/tasks?cursor={middle}",
                "/tasks/<id> (a FAILURE task)": f"/tasks/{failed_id}",
            }
            feeder.start()
            times = measure_pages(session, base, pages, samples)
        finally:
            stop.set()
            if feeder.is_alive():
                feeder.join(10)
            if server is not None:
                server.stop()
            if worker is not None:
                worker.stop()
            dispose(app)
    note = f"{count:,} tasks, {samples} requests, worker busy"
    worst = 0.0
    for label, values in times.items():
        ctx.add(NAME, f"{label} p50", percentile(values, 50), "ms", note)
        ctx.add(NAME, f"{label} p95", percentile(values, 95), "ms", note)
        worst = max(worst, percentile(values, 95))
    ctx.shared["console_worst_p95"] = worst
