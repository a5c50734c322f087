"""Leases on real SQLite and PostgreSQL: give-backs, lock holders of finished attempts, fenced writes."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app
from sqlalchemy import update

from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.fencing import fenced_update
from webapp.tasks.models import AsyncTask, utcnow
from webapp.tasks.progress import TaskContext

WORKER = "lease-worker"


def kinds(service: AsyncTaskService, task_id: int) -> list[str]:
    return [event.kind for event in service.events_for(task_id)]


def test_a_give_back_can_wait_and_not_count_the_attempt(app_ctx):
    service = AsyncTaskService()
    task_id = service.submit_task("NOOP", {}).id
    [attempt] = service.claim_due_tasks(WORKER, 1)
    assert service.release_tasks([attempt], WORKER, reason="lock held", due_in=30, count_attempt=False) == [task_id]
    row = service.require_task(task_id)
    assert (row.status, row.attempts, row.claim_token) == ("PENDING", 0, None)
    assert row.next_run_at > utcnow() + timedelta(seconds=20)
    assert service.claim_due_tasks(WORKER, 1) == []  # not due before its back-off
    assert kinds(service, task_id) == ["SUBMITTED", "CLAIMED", "RELEASED"]


def test_an_ordinary_release_is_due_at_once_and_counts_the_attempt(app_ctx):
    service = AsyncTaskService()
    task_id = service.submit_task("NOOP", {}).id
    [attempt] = service.claim_due_tasks(WORKER, 1)
    assert service.release_tasks([attempt], WORKER) == [task_id]
    assert service.require_task(task_id).attempts == 1
    [again] = service.claim_due_tasks(WORKER, 1)
    assert (again.id, again.attempt) == (task_id, 2)


def test_a_lock_holder_is_done_only_when_its_attempt_ended(app_ctx):
    service = AsyncTaskService()
    task_id = service.submit_task("FLAKY", {"succeed_on": 3}).id
    [first] = service.claim_due_tasks(WORKER, 1)
    # Still running: its lock is not a leftover.
    assert service.lock_holders_done([(task_id, 1, first.claim_token)]) == set()
    assert service.finish_task(first, TaskResult.failure("boom"), worker_id=WORKER).status == "RETRYING"
    db.session.execute(update(AsyncTask).where(AsyncTask.id == task_id).values(next_run_at=utcnow()))
    db.session.commit()
    [second] = service.claim_due_tasks(WORKER, 1)
    assert service.lock_holders_done([(task_id, 1, first.claim_token)]) == {task_id}
    # A value that is the running attempt's own token, or an attempt that never ran, is not.
    assert service.lock_holders_done([(task_id, 1, second.claim_token)]) == set()
    assert service.lock_holders_done([(task_id, 0, "someone-else")]) == set()


def test_progress_is_fenced_by_the_claim_token(app_ctx):
    service = AsyncTaskService()
    task_id = service.submit_task("NOOP", {}).id
    [attempt] = service.claim_due_tasks(WORKER, 1)
    context = TaskContext(current_app._get_current_object(), attempt)
    context.report_progress(0.25, "a quarter")
    db.session.expire_all()
    assert service.require_task(task_id).progress == 0.25
    service.release_tasks([attempt], WORKER)
    context._last_write = 0.0
    context.report_progress(0.75, "too late")  # the lease is gone: nothing changes
    db.session.expire_all()
    row = service.require_task(task_id)
    assert (row.progress, row.status) == (0.25, "PENDING")


def test_the_fenced_update_names_id_token_and_the_leased_status():
    sql = str(fenced_update(7, "token").values(progress=0.5))
    assert "async_task.id = " in sql and "async_task.claim_token = " in sql and "async_task.status = " in sql
