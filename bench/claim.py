"""5. Claim rate with many finished rows in the table vs with none.

Both runs queue the same number of due no-op tasks; one also has a large number of SUCCESS
rows (written in SQL beforehand, table analysed as autovacuum would). ``claim_due_tasks`` is
called in this process, 10 at a time, until the queue is empty. A claim that only touches
waiting rows (partial index) costs the same in both. A third run times claims right after a
burst of submits into an empty table, before any ANALYZE, where a plan chosen from stale
statistics shows.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from .common import (
    Context,
    bench_app,
    bulk_insert_tasks,
    dispose,
    percentile,
    pg_database,
    psql_connect,
)
from .drain import TABLES

NAME = "claim"
CLAIM_BATCH = 10
BURST_CLAIMS = 20


def claim_all(url: str, due: int, finished: int, analyze: bool = True,
              max_calls: int | None = None) -> tuple[float, float]:
    """Load the table, then claim until empty (or ``max_calls`` claims); returns (tasks/s, p50 ms
    per claim call). Without ``analyze`` the planner still has the statistics of the empty
    table, as after a burst of submits that autovacuum has not analysed yet."""
    from webapp.extensions import db
    from webapp.tasks.service import AsyncTaskService

    with psql_connect(url) as conn:
        conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    bulk_insert_tasks(url, finished, "SUCCESS")
    bulk_insert_tasks(url, due, "PENDING")
    if analyze:
        with psql_connect(url) as conn:
            conn.execute("VACUUM ANALYZE async_task")
    app = bench_app(url)
    calls: list[float] = []
    claimed = 0
    try:
        with app.app_context():
            service = AsyncTaskService()
            db.session.execute(text("SELECT 1"))  # connection up before the clock starts
            db.session.rollback()
            began = time.perf_counter()
            while True:
                start = time.perf_counter()
                got = service.claim_due_tasks("bench-claimer", CLAIM_BATCH)
                calls.append((time.perf_counter() - start) * 1000)
                if not got:
                    break
                claimed += len(got)
                if max_calls is not None and len(calls) >= max_calls:
                    break
            elapsed = time.perf_counter() - began
            db.session.remove()
    finally:
        dispose(app)
    if max_calls is None and claimed != due:
        raise RuntimeError(f"claimed {claimed} of {due} due tasks")
    return claimed / elapsed, percentile(calls, 50)


def run(ctx: Context) -> None:
    """Claim rate on an empty table and on one with many finished rows; their ratio."""
    due = 2_000 if ctx.quick else 10_000
    finished = 50_000 if ctx.quick else 1_000_000
    with pg_database(NAME) as url:
        empty_rate, empty_p50 = claim_all(url, due, 0)
        ctx.add(NAME, "claim rate, no finished rows", empty_rate, "tasks/s",
                f"{due:,} due, batch {CLAIM_BATCH}; p50 {empty_p50:.2f} ms a claim")
        full_rate, full_p50 = claim_all(url, due, finished)
        ctx.add(NAME, f"claim rate, {finished:,} finished rows", full_rate, "tasks/s",
                f"{due:,} due, batch {CLAIM_BATCH}; p50 {full_p50:.2f} ms a claim")
    ratio = full_rate / empty_rate
    ctx.add(NAME, "ratio with finished rows / without", ratio, "x", "target: >= 0.8")
    ctx.shared["claim_ratio"] = ratio
    # A burst of submits lands faster than autovacuum analyses the table: the claim must not
    # depend on fresh statistics to pick its index.
    burst = 20_000 if ctx.quick else 100_000
    with pg_database(f"{NAME}_burst") as url:
        burst_rate, burst_p50 = claim_all(url, burst, 0, analyze=False, max_calls=BURST_CLAIMS)
    ctx.add(NAME, f"claim p50 right after {burst:,} submits (not analysed yet)", burst_p50, "ms",
            f"{BURST_CLAIMS} claims of {CLAIM_BATCH}: {burst_rate:,.0f} tasks/s; compare the p50s above")
