"""Housekeeping jobs a consumer runs beside its claims: start deadlines, retention, history, schedules.

Each is a plugin in Oban's sense: a function of the app, run on the consumer's scheduler in an
app context of its own, that logs and swallows its failures so one bad run never stops the
consumer. Every consumer runs them; each job is safe to run in many processes at once (the
deadline sweep and the purge are conditional statements, the history job takes its mark row's
lock, a schedule slot is unique per run time).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.base import BaseScheduler
from flask import Flask

from ..config import EngineSettings
from ..extensions import db
from .history import RUN_AT_SECOND, aggregate_history
from .service import AsyncTaskService

log = logging.getLogger(__name__)


def add_housekeeping_jobs(scheduler: BaseScheduler, app: Flask, settings: EngineSettings,
                          interval: float, first_run: datetime) -> None:
    """Schedule every housekeeping job; the interval ones first run at ``first_run``."""
    scheduler.add_job(expire_start_deadlines, "interval", seconds=interval, args=[app],
                      id="start-deadlines", next_run_time=first_run)
    if settings.retention_days:
        scheduler.add_job(purge_expired, "interval", hours=1, args=[app, settings.retention_days],
                          id="retention", next_run_time=first_run)
    # Per-minute statistics for the console's history charts and /metrics (tasks/history.py).
    scheduler.add_job(aggregate_history, "cron", second=RUN_AT_SECOND, args=[app], id="history")
    schedules = app.extensions.get("schedules")
    if schedules is not None:  # recurring schedules (webapp/schedules/runner.py): due slots -> tasks
        scheduler.add_job(schedules.tick, "interval", seconds=schedules.interval, id="schedules",
                          next_run_time=first_run)


def expire_start_deadlines(app: Flask) -> None:
    """Waiting tasks past their ``start_by`` end CANCELLED (the claim already skips them)."""
    with app.app_context():
        try:
            expired = AsyncTaskService().expire_start_deadlines()
            if expired:
                log.info("start deadline passed: %d task(s) cancelled: %s", len(expired), expired[:20])
        except Exception:
            log.exception("start-deadline sweep failed")
        finally:
            db.session.remove()


def purge_expired(app: Flask, retention_days: int) -> None:
    """Retention: drop finished tasks older than ASYNC_TASK_RETENTION_DAYS (hourly)."""
    with app.app_context():
        try:
            cutoff = datetime.now(UTC) - timedelta(days=retention_days)
            deleted = AsyncTaskService().purge_finished(cutoff)
            if deleted:
                log.info("retention: purged %d task(s) finished before %s", deleted, cutoff.isoformat())
        except Exception:
            log.exception("retention purge failed")
        finally:
            db.session.remove()
