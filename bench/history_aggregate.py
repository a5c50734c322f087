"""History aggregation cost on PostgreSQL: ``.venv/bin/python bench/history_aggregate.py TASKS``.

Creates a scratch database, inserts TASKS finished tasks of 10 types spread over the last six
minutes with their SUBMITTED, CLAIMED and SUCCEEDED events (in time order, as the engine writes
them), then times the first aggregation run (it reads the last hour) and a steady-state run (the
last two minutes again, read from the event id floor the first run left). Then it fills 30 days
of statistics for 20 types (minutes for two days, hours before) and times the reads the console
and /metrics make: a chart series of every range for all types, the last minute, and the queue
latency of 10 types while one of them has a backlog of TASKS due tasks.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from flask_migrate import upgrade
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webapp import create_app  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.tasks.history import HistoryWriter  # noqa: E402
from webapp.tasks.history_query import RANGES, last_minute, queue_latency, series  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "taskdeck_history_bench"
TASKS = text("""
    INSERT INTO async_task (task_type, status, priority, payload, retry_count, max_retry_count, retry_strategy,
                            retry_interval, created_at, updated_at, next_run_at, started_at, attempts,
                            recovery_count, retry_jitter, pending_parents)
    SELECT 'T' || (g % 10), 'SUCCESS', 0, '{}', 0, 3, 'FIXED', 1, :t0, :t0, :t0 + (g % 300) * interval '1 second',
           :t0 + (g % 300) * interval '1 second' + interval '20 ms', 1, 0, 0, 0
    FROM generate_series(1, :n) AS g""")
EVENTS = text("""
    INSERT INTO task_event (task_id, at, kind, attempt)
    SELECT task_id, at, kind, attempt FROM (
        SELECT id AS task_id, created_at - interval '1 second' AS at, 'SUBMITTED' AS kind, NULL::int AS attempt
        FROM async_task
        UNION ALL SELECT id, started_at, 'CLAIMED', 1 FROM async_task
        UNION ALL SELECT id, started_at + (id % 97) * interval '1 ms', 'SUCCEEDED', 1 FROM async_task
    ) AS e ORDER BY at""")
STATS = text("""
    INSERT INTO task_stat (task_type, period_seconds, period_start, started, succeeded, failed, retried,
                           run_count, run_p50_ms, run_p95_ms, run_max_ms, wait_count, wait_p50_ms, wait_p95_ms)
    SELECT 'S' || k, p.seconds, p.start, 60, 55, 3, 2, 60, 120, 900, 1500, 60, 15, 80
    FROM generate_series(1, 20) AS k,
         (SELECT 60 AS seconds, g AS start FROM generate_series(:now - interval '2 days', :now, interval '1 minute') AS g
          UNION ALL
          SELECT 3600, g FROM generate_series(:now - interval '30 days', :now - interval '2 days' - interval '1 hour',
                                              interval '1 hour') AS g) AS p
    ON CONFLICT DO NOTHING""")
BACKLOG = text("""
    INSERT INTO async_task (task_type, status, priority, payload, retry_count, max_retry_count, retry_strategy,
                            retry_interval, created_at, updated_at, next_run_at, attempts, recovery_count,
                            retry_jitter, pending_parents)
    SELECT 'T0', 'PENDING', 0, '{}', 0, 3, 'FIXED', 1, :now, :now, :now - g * interval '1 ms', 0, 0, 0, 0
    FROM generate_series(1, :n) AS g""")


def timed(label: str, call) -> None:  # type: ignore[no-untyped-def]
    began = time.perf_counter()
    call()
    print(f"{label}: {time.perf_counter() - began:.3f} s")


def main(tasks: int) -> None:
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    url = SERVER.replace("postgresql://", "postgresql+psycopg://").rsplit("/", 1)[0] + f"/{DATABASE}"
    app = create_app({"TESTING": True, "SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": url,
                      "ASYNC_TASK_PROCESSORS": []})
    try:
        with app.app_context():
            upgrade()
            now = datetime.now(UTC)
            db.session.execute(TASKS, {"t0": now - timedelta(minutes=6), "n": tasks})
            db.session.execute(EVENTS)
            db.session.commit()
            db.session.execute(text("ANALYZE"))
            db.session.commit()
            for label in ("first run (the last hour)", "steady-state run (the last 2 minutes again)"):
                began = time.perf_counter()
                run = HistoryWriter().run(now + timedelta(minutes=1))
                assert run is not None
                print(f"{label}: {time.perf_counter() - began:.2f} s, {run.minute_rows} minute rows written; "
                      f"{tasks} tasks, {3 * tasks} events in the table")
            minute = now.replace(second=0, microsecond=0)
            db.session.execute(STATS, {"now": minute})
            db.session.execute(BACKLOG, {"now": now, "n": tasks})
            db.session.commit()
            db.session.execute(text("ANALYZE"))
            db.session.commit()
            for key, chosen in RANGES.items():
                timed(f"chart series {key}, all 20 types", lambda chosen=chosen: series(chosen, now=now))
            timed("chart series 30d, one type", lambda: series(RANGES["30d"], "S1", now=now))
            timed("/metrics: the last minute", last_minute)
            types = [f"T{k}" for k in range(10)]
            timed(f"queue latency of 10 types, {tasks} due tasks of T0", lambda: queue_latency(types))
            db.session.remove()
            db.engine.dispose()
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60_000)
