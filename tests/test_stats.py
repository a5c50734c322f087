"""Read-only dashboard queries, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask
from sqlalchemy import update

from webapp.console.presenters import nice_ceiling, throughput_chart
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult, stats
from webapp.tasks.models import AsyncTask, Worker, utcnow
from webapp.tasks.queries import Page

FAR_FUTURE = "2999-01-01T00:00:00Z"


def finish(service: AsyncTaskService, task_type: str, count: int, result: TaskResult) -> list[int]:
    ids = [service.submit_task(task_type, {}).id for _ in range(count)]
    claimed = service.claim_due_tasks("stats-worker", 100, [task_type])
    for task in claimed:
        service.finish_task(task, result, worker_id="stats-worker")
    return ids


def test_status_counts_and_counts_by_type(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    service.submit_task("NOOP", {}, run_at=FAR_FUTURE)
    finish(service, "FATAL", 2, TaskResult.failure("no", retryable=False))
    counts = stats.status_counts()
    assert counts["PENDING"] == 1 and counts["FAILURE"] == 2 and counts["SUCCESS"] == 0
    # Every status present, zeros included (WAITING came with workflows).
    assert set(counts) == {"PENDING", "PROCESSING", "SUCCESS", "FAILURE", "RETRYING", "CANCELLED", "WAITING"}
    assert stats.status_counts("FATAL")["PENDING"] == 0
    by_type = stats.counts_by_type()
    assert by_type["NOOP"]["PENDING"] == 1 and by_type["FATAL"]["FAILURE"] == 2
    assert by_type["NOOP"]["FAILURE"] == 0


def test_throughput_buckets_per_minute(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    ok = finish(service, "NOOP", 3, TaskResult.success())
    bad = finish(service, "FATAL", 2, TaskResult.failure("no", retryable=False))
    now = utcnow()
    minute = now.replace(second=0, microsecond=0)
    # Pin the times so a minute boundary during the test cannot move a task between buckets.
    placed = {ok[0]: minute - timedelta(minutes=10), bad[0]: now - timedelta(hours=2)}
    for task_id in [*ok[1:], *bad[1:]]:
        placed[task_id] = minute
    for task_id, finished_at in placed.items():
        db.session.execute(update(AsyncTask).where(AsyncTask.id == task_id).values(finished_at=finished_at))
    db.session.commit()
    data = stats.throughput(60, now)
    assert len(data.buckets) == 60
    assert data.buckets[-1].start == now.replace(second=0, microsecond=0)
    assert (data.buckets[-1].succeeded, data.buckets[-1].failed) == (2, 1)
    assert data.buckets[-11].succeeded == 1
    assert data.succeeded == 3 and data.failed == 1
    assert data.failure_rate == 0.25
    assert stats.throughput(60, now + timedelta(hours=3)).failure_rate is None


def test_oldest_due_ignores_future_and_finished_tasks(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    assert stats.oldest_due() == (None, 0)
    service.submit_task("NOOP", {}, run_at=FAR_FUTURE)
    finish(service, "FATAL", 1, TaskResult.failure("no", retryable=False))
    assert stats.oldest_due() == (None, 0)
    first = service.submit_task("NOOP", {}).id
    service.submit_task("NOOP", {})
    db.session.execute(update(AsyncTask).where(AsyncTask.id == first)
                       .values(next_run_at=utcnow() - timedelta(minutes=5)))
    db.session.commit()
    age, due = stats.oldest_due()
    assert due == 2 and age is not None and timedelta(minutes=4, seconds=50) < age < timedelta(minutes=6)


def test_workers_online_use_the_heartbeat_rule(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    service.register_worker("fresh", "h", 1, 4, 1.0)
    service.register_worker("stale", "h", 2, 2, 1.0)
    service.register_worker("gone", "h", 3, 8, 1.0)
    service.stop_worker("gone")
    db.session.execute(update(Worker).where(Worker.id == "stale")
                       .values(last_heartbeat_at=utcnow() - timedelta(seconds=10)))
    db.session.execute(update(Worker).where(Worker.id == "fresh").values(busy=3))
    db.session.commit()
    summary = stats.worker_summary()
    assert (summary.online, summary.threads, summary.busy) == (1, 4, 3)
    assert {w.id for w in stats.workers()} == {"fresh", "stale", "gone"}
    assert {w.id for w in stats.workers(include_stopped=False)} == {"fresh", "stale"}
    overview = stats.overview()
    assert overview.workers.online == 1 and len(overview.throughput.buckets) == 60


def test_audit_page_is_keyset_paginated_and_filtered(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    for n in range(5):
        service.audit("ann" if n % 2 else "bob", "task.cancel" if n < 3 else "login", "task", n)
    db.session.commit()
    first = stats.audit_page(limit=2)
    assert [e.target_id for e in first.items] == ["4", "3"] and first.next_cursor is not None
    second = stats.audit_page(limit=2, cursor=first.next_cursor)
    assert [e.target_id for e in second.items] == ["2", "1"]
    assert [e.target_id for e in stats.audit_page(actor="ann").items] == ["3", "1"]
    assert [e.target_id for e in stats.audit_page(action="task.").items] == ["2", "1", "0"]
    assert [e.target_id for e in stats.audit_for_task(1)] == ["1"]


def test_chart_layout() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 10, 11, 45, 101)] == [1, 1, 5, 10, 10, 20, 50, 200]
    now = utcnow()
    data = stats.Throughput([stats.MinuteBucket(now - timedelta(minutes=59 - i), i % 3, 1 if i == 59 else 0)
                             for i in range(60)])
    chart = throughput_chart(data)
    assert len(chart.bars) == 60 and chart.y_max == 5
    last = chart.bars[-1]
    assert last.failure_height > 0 and abs(last.failure_y + last.failure_height - last.success_y) < 0.01
    assert all(bar.success_y + bar.success_height <= chart.bottom + 0.01 for bar in chart.bars)
    assert [label for _, label, _ in chart.x_labels] == ["now", "-15 min", "-30 min", "-45 min"]


def test_tasks_and_the_audit_log_page_through_one_keyset_helper(app_ctx):
    service = AsyncTaskService()
    ids = [service.submit_task("NOOP", {}).id for _ in range(5)]
    for n in range(5):
        service.audit("ann", "task.cancel", "task", n)
    service.session.commit()
    first = service.list_tasks(limit=3)
    second = service.list_tasks(limit=3, cursor=first.next_cursor)
    assert isinstance(first, Page) and [t.id for t in first.items + second.items] == ids[::-1]
    assert second.next_cursor is None
    audit = stats.audit_page(limit=4)
    assert isinstance(audit, Page) and len(audit.items) == 4 and audit.next_cursor == audit.items[-1].id
    assert len(stats.audit_page(limit=4, cursor=audit.next_cursor).items) == 1
