"""Export throughput and memory on PostgreSQL: ``.venv/bin/python bench/export_stream.py ROWS``.

Creates a scratch database, inserts ROWS finished tasks of ~300 bytes, exports them as CSV and
as JSON Lines through ``webapp.exports`` (what the console and API stream), and prints rows per
second and the process's peak RSS before and after (flat memory: the two stay equal).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import psycopg
from flask_migrate import upgrade
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webapp import create_app  # noqa: E402
from webapp.exports import ExportFormat, export_tasks  # noqa: E402
from webapp.extensions import db  # noqa: E402
from webapp.tasks.queries import TaskFilter  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "taskdeck_export_bench"
INSERT = text("""
    INSERT INTO async_task (task_type, status, priority, payload, retry_count, max_retry_count, retry_strategy,
                            retry_interval, created_at, updated_at, next_run_at, attempts, recovery_count,
                            retry_jitter, pending_parents)
    SELECT 'BULK', 'SUCCESS', 0, jsonb_build_object('n', g, 'text', repeat('x', 200)), 0, 3, 'EXPONENTIAL', 60,
           now(), now(), now(), 1, 0, 0, 0
    FROM generate_series(1, :rows) AS g""")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(rows: int) -> None:
    with psycopg.connect(SERVER, autocommit=True) as server:
        server.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        server.execute(f"CREATE DATABASE {DATABASE}")
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}",
                      "SECRET_KEY": "x" * 40, "TESTING": True, "ASYNC_TASK_CONSUMER_ENABLED": False})
    try:
        with app.app_context():
            upgrade(directory=str(Path(__file__).resolve().parent.parent / "migrations"))
            db.session.execute(INSERT, {"rows": rows})
            db.session.commit()
        with app.test_request_context():
            for export_format in ExportFormat:
                before = peak_rss_mb()
                export = export_tasks(TaskFilter(task_type="BULK"), export_format, "bench")
                started = time.perf_counter()
                size = sum(len(chunk) for chunk in export.chunks())
                seconds = time.perf_counter() - started
                print(f"{export_format.value}: {rows:,} rows, {size / 1e6:.0f} MB in {seconds:.1f} s "
                      f"({rows / seconds:,.0f} rows/s); peak RSS {before:.0f} MB before, {peak_rss_mb():.0f} MB after")
    finally:
        with app.app_context():
            db.engine.dispose()
        with psycopg.connect(SERVER, autocommit=True) as server:
            server.execute(f"DROP DATABASE IF EXISTS {DATABASE}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
