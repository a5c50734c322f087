"""History: per-minute statistics aggregated from a controlled set of events, on both databases.

The events are written with known times, so every count and percentile has an exact expected
value (PostgreSQL's ``percentile_cont`` and the Python one on SQLite must agree with them).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update

from webapp.extensions import db
from webapp.tasks.errors import ValidationError
from webapp.tasks.history import HistoryWriter, floor_minute
from webapp.tasks.history_models import HOUR, MINUTE, TaskStat, TaskStatMark
from webapp.tasks.history_query import RANGES, last_minute, parse_range, queue_latency, series
from webapp.tasks.history_sql import percentile
from webapp.tasks.models import AsyncTask, TaskEvent

NOW = datetime(2026, 11, 29, 12, 0, 30, tzinfo=UTC)
M = NOW.replace(minute=0, second=0) - timedelta(minutes=10)  # the minute the events happen in


def reset_history() -> None:
    """Empty statistics and a mark that never ran (the PostgreSQL database outlives a test)."""
    db.session.execute(delete(TaskStat))
    db.session.execute(update(TaskStatMark).values(next_minute=None, event_floor=0))
    db.session.commit()


def add_task(task_type: str, due: datetime, attempts: int, status: str = "SUCCESS",
             started_at: datetime | None = None) -> int:
    """A task row; ``started_at`` is what the claim of its current attempt stamped (None: released)."""
    return db.session.execute(insert(AsyncTask).values(started_at=started_at,
        task_type=task_type, status=status, priority=0, payload={}, retry_count=0, max_retry_count=3,
        retry_strategy="FIXED", retry_interval=1, created_at=due, updated_at=due, next_run_at=due,
        attempts=attempts, recovery_count=0, retry_jitter=0, pending_parents=0)
        .returning(AsyncTask.id)).scalar_one()


def add_event(task_id: int, kind: str, at: datetime, attempt: int) -> None:
    db.session.execute(insert(TaskEvent).values(task_id=task_id, kind=kind, at=at, attempt=attempt))


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def write_scenario() -> None:
    """alpha: five runs in minute M; beta: a retry in M, then a failure in M + 1."""
    runs_ms = [100, 200, 300, 400, 10_000]
    for index, run in enumerate(runs_ms):
        claimed = M + seconds(index + 1)  # waits 1 s .. 5 s
        # Runs are timed from started_at, or from the CLAIMED event when it is not set (both ways here).
        task = add_task("alpha", M, attempts=1, started_at=claimed if index % 2 else None)
        add_event(task, "SUBMITTED", M - seconds(30), None)
        add_event(task, "CLAIMED", claimed, 1)
        add_event(task, "SUCCEEDED", claimed + timedelta(milliseconds=run), 1)
    beta = add_task("beta", M + seconds(63), attempts=2, status="FAILURE", started_at=M + seconds(70))
    add_event(beta, "CLAIMED", M + seconds(2), 1)
    add_event(beta, "RETRY_SCHEDULED", M + seconds(3), 1)
    add_event(beta, "CLAIMED", M + seconds(70), 2)
    add_event(beta, "FAILED", M + seconds(72), 2)
    db.session.commit()


def stored(period_seconds: int = MINUTE) -> dict[tuple[str, datetime], dict[str, Any]]:
    table = TaskStat.__table__
    rows = db.session.execute(select(table).where(table.c.period_seconds == period_seconds)).mappings()
    return {(row["task_type"], row["period_start"]): dict(row) for row in rows}


@pytest.fixture
def ctx(app):
    with app.app_context():
        reset_history()
        yield app


def test_percentile_is_postgres_percentile_cont():
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([100, 200, 300, 400, 10_000], 0.5) == 300
    assert percentile([100, 200, 300, 400, 10_000], 0.95) == pytest.approx(8080)


def test_counts_and_percentiles_of_each_minute(ctx):
    write_scenario()
    run = HistoryWriter().run(NOW)
    assert run is not None and run.minute_rows == 3
    rows = stored()
    alpha = rows[("alpha", M)]
    assert (alpha["started"], alpha["succeeded"], alpha["failed"], alpha["retried"]) == (5, 5, 0, 0)
    assert alpha["run_count"] == 5
    assert alpha["run_p50_ms"] == pytest.approx(300, abs=0.01)
    assert alpha["run_p95_ms"] == pytest.approx(8080, abs=0.01)
    assert alpha["run_max_ms"] == pytest.approx(10_000, abs=0.01)
    assert alpha["wait_count"] == 5
    assert alpha["wait_p50_ms"] == pytest.approx(3000, abs=0.01)
    assert alpha["wait_p95_ms"] == pytest.approx(4800, abs=0.01)
    beta_first = rows[("beta", M)]
    assert (beta_first["started"], beta_first["retried"], beta_first["failed"]) == (1, 1, 0)
    assert beta_first["run_p50_ms"] == pytest.approx(1000, abs=0.01)
    assert beta_first["wait_count"] == 0  # its due time moved with the retry: not known any more
    beta_second = rows[("beta", M + timedelta(minutes=1))]
    assert (beta_second["started"], beta_second["failed"], beta_second["succeeded"]) == (1, 1, 0)
    assert beta_second["run_max_ms"] == pytest.approx(2000, abs=0.01)
    assert beta_second["wait_p50_ms"] == pytest.approx(7000, abs=0.01)
    assert ("alpha", M - timedelta(minutes=1)) not in rows  # a SUBMITTED event counts for nothing


def test_aggregating_again_writes_the_same_figures(ctx):
    write_scenario()
    HistoryWriter().run(NOW)
    first = stored()
    again = HistoryWriter().run(NOW)
    assert again is not None and again.start == floor_minute(NOW - seconds(5)) - timedelta(minutes=2)
    assert stored() == first
    # From scratch (mark forgotten): the same rows again, not doubled.
    db.session.execute(update(TaskStatMark).values(next_minute=None, event_floor=0))
    db.session.commit()
    HistoryWriter().run(NOW)
    assert stored() == first


def test_a_late_event_is_counted_by_the_next_run_and_the_mark_moves_on(ctx):
    write_scenario()
    HistoryWriter().run(NOW)
    last = floor_minute(NOW - seconds(5)) - timedelta(minutes=1)
    late = add_task("gamma", last, attempts=1)
    add_event(late, "CLAIMED", last + seconds(1), 1)  # committed after the run that read its minute
    db.session.commit()
    HistoryWriter().run(NOW + timedelta(minutes=1))
    assert stored()[("gamma", last)]["started"] == 1
    mark = db.session.execute(select(TaskStatMark)).scalar_one()
    assert mark.next_minute == floor_minute(NOW + timedelta(minutes=1) - seconds(5))
    assert mark.event_floor > 0  # the old scenario events are below it: later runs skip them
    assert last_minute().minute == mark.next_minute - timedelta(minutes=1)


def stat(task_type: str, start: datetime, period: int = MINUTE, **figures: Any) -> dict[str, Any]:
    row = {"task_type": task_type, "period_seconds": period, "period_start": start, "started": 0,
           "succeeded": 0, "failed": 0, "retried": 0, "run_count": 0, "wait_count": 0}
    row.update(figures)
    return row


def test_minutes_older_than_two_days_become_hours_and_thirty_days_are_kept(ctx):
    hour = (NOW - timedelta(days=3)).replace(minute=0, second=0)
    recent = floor_minute(NOW - timedelta(days=1))
    db.session.execute(insert(TaskStat), [
        stat("alpha", hour, started=2, succeeded=2, run_count=2, run_p50_ms=100, run_p95_ms=150, run_max_ms=160,
             wait_count=2, wait_p50_ms=10, wait_p95_ms=20),
        stat("alpha", hour + timedelta(minutes=30), started=6, succeeded=5, failed=1, run_count=6, run_p50_ms=300,
             run_p95_ms=900, run_max_ms=1000, wait_count=6, wait_p50_ms=30, wait_p95_ms=40),
        stat("alpha", recent, started=1, succeeded=1),
        stat("alpha", NOW - timedelta(days=31), HOUR, started=9),
        stat("alpha", (NOW - timedelta(days=29)).replace(minute=0, second=0), HOUR, started=4),
    ])
    db.session.commit()
    run = HistoryWriter().run(NOW)
    assert run is not None and run.hour_rows == 1 and run.deleted == 1
    hours = stored(HOUR)
    merged = hours[("alpha", hour)]
    assert (merged["started"], merged["succeeded"], merged["failed"], merged["run_count"]) == (8, 7, 1, 8)
    assert merged["run_p50_ms"] == pytest.approx((2 * 100 + 6 * 300) / 8)  # weighted by runs
    assert merged["run_p95_ms"] == 900 and merged["run_max_ms"] == 1000  # the highest minute's
    assert merged["wait_p50_ms"] == pytest.approx((2 * 10 + 6 * 30) / 8) and merged["wait_p95_ms"] == 40
    assert len(hours) == 2  # the 31-day-old hour is gone, the 29-day-old one stays
    minutes = stored()
    assert ("alpha", recent) in minutes and ("alpha", hour) not in minutes
    HistoryWriter().run(NOW)  # rolling up again changes nothing
    assert stored(HOUR) == hours


@pytest.mark.parametrize("key", list(RANGES))
def test_series_has_one_bar_per_step_and_totals_the_range(ctx, key):
    write_scenario()
    HistoryWriter().run(NOW)
    chosen = parse_range(key)
    data = series(chosen, now=NOW)
    assert len(data.points) == chosen.bars
    assert data.points[0].start == data.start and data.start + chosen.span > NOW
    assert (data.total.started, data.total.succeeded, data.total.failed, data.total.retried) == (7, 5, 1, 1)
    # Merged over types and minutes: p50 weighted by runs, p95 and max the highest.
    assert data.total.run_count == 7
    assert data.total.run_p50_ms == pytest.approx((5 * 300 + 1000 + 2000) / 7, abs=0.01)
    assert data.total.run_p95_ms == pytest.approx(8080, abs=0.01)
    assert data.total.run_max_ms == pytest.approx(10_000, abs=0.01)
    assert data.total.wait_count == 6 and data.total.wait_p95_ms == pytest.approx(7000, abs=0.01)
    only_beta = series(chosen, "beta", now=NOW)
    assert only_beta.total.started == 2 and only_beta.total.succeeded == 0


def test_a_range_not_offered_is_refused_naming_the_field():
    with pytest.raises(ValidationError) as refused:
        parse_range("2h")
    assert refused.value.field == "range" and "1h, 24h, 7d, 30d" in refused.value.message


def test_queue_latency_per_type_is_the_oldest_due_task(ctx):
    now = datetime.now(UTC)
    add_task("alpha", now - timedelta(minutes=3), attempts=0, status="PENDING")
    add_task("alpha", now - timedelta(minutes=1), attempts=0, status="RETRYING")
    add_task("beta", now + timedelta(hours=1), attempts=0, status="PENDING")  # not due yet
    db.session.commit()
    ages = queue_latency(["alpha", "beta"], now=now)
    assert ages["alpha"] == pytest.approx(timedelta(minutes=3), abs=timedelta(seconds=1))
    assert ages["beta"] is None


def test_a_run_passes_while_another_process_holds_the_mark(make_app):
    app = make_app("postgres")
    with app.app_context():
        reset_history()
        with db.engine.connect() as other:
            other.execute(select(TaskStatMark).with_for_update())
            assert HistoryWriter().run(NOW) is None
            other.rollback()
        assert HistoryWriter().run(NOW) is not None


def test_a_missing_mark_is_put_back_and_the_next_run_aggregates(ctx):
    db.session.execute(delete(TaskStatMark))
    db.session.commit()
    assert HistoryWriter().run(NOW) is None
    write_scenario()
    run = HistoryWriter().run(NOW)
    assert run is not None and run.minute_rows == 3
