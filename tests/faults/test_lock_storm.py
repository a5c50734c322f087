"""Issue 10 item 13: no claim-release storm when a Redis lock outlives its attempt.

A worker that stops right after committing an outcome (before it releases its Redis lock)
leaves the lock for its whole TTL. The task, due again 0.3 s later, used to be claimed and
given back hundreds of times until the lock expired, each give-back counting an attempt and
waking every worker. Now the next claim sees that the lock belongs to a finished attempt of the
same task (its previous attempt wrote an outcome, and the lock's value, that attempt's claim
token, holds no lease any more) and takes it over; a lock held by anything else sends the task
back with a back-off of the lock's remaining time, without counting an attempt and without
waking every worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests import processors
from tests.conftest import wait_until
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.consumer import Consumer
from webapp.tasks.models import AsyncTask, TaskEvent

pytestmark = [pytest.mark.redis]

LOCK_TTL_MS = 15_000


def events_of(app: Flask, task_id: int, kind: str) -> int:
    with app.app_context():
        try:
            return db.session.scalar(select(func.count()).select_from(TaskEvent)
                                     .where(TaskEvent.task_id == task_id, TaskEvent.kind == kind)) or 0
        finally:
            db.session.remove()


def task_row(app: Flask, task_id: int) -> AsyncTask:
    with app.app_context():
        try:
            row = AsyncTaskService().get_task(task_id)
            assert row is not None
            db.session.expunge(row)
            return row
        finally:
            db.session.remove()


def finish_without_releasing_the_lock(app: Flask, task_id: int) -> None:
    """What a worker stopped between its outcome's commit and its lock release leaves behind."""
    locks = app.extensions["async_task"].locks
    with app.app_context():
        service = AsyncTaskService()
        [attempt] = [t for t in service.claim_due_tasks("stopped-worker", 10) if t.id == task_id]
        locks.client.delete(locks.key(task_id))  # a lock left by an earlier test's task of that id
        assert locks.acquire_many([(attempt.id, attempt.claim_token)]) == {attempt.id}
        locks.client.pexpire(locks.key(task_id), LOCK_TTL_MS)
        outcome = service.finish_task(attempt, TaskResult.failure("first attempt fails"),
                                      worker_id="stopped-worker")
        assert outcome.status == "RETRYING"
        db.session.remove()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_lock_left_by_a_finished_attempt_is_taken_over(make_app: Callable[..., Flask], backend: str) -> None:
    processors.RUN_LOG.clear()
    app = make_app(backend, redis=True)
    with app.app_context():
        task_id = AsyncTaskService().submit_task("FLAKY", {"succeed_on": 2}).id
    finish_without_releasing_the_lock(app, task_id)
    Consumer(app, concurrency=2, poll_interval=0.1).start()
    # Well before the 15 s lock expires: the finished attempt's lock does not block its task.
    wait_until(lambda: task_row(app, task_id).status == "SUCCESS", timeout=5,
               message="the retry runs before the stale lock expires")
    row = task_row(app, task_id)
    assert row.attempts == 2
    assert events_of(app, task_id, "CLAIMED") == 2
    assert events_of(app, task_id, "RELEASED") == 0
    assert processors.RUN_LOG.count((task_id, 2)) == 1
    locks = app.extensions["async_task"].locks
    assert locks.client.get(locks.key(task_id)) is None  # released after the outcome


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_lock_held_by_something_else_backs_off_without_counting_attempts(
        make_app: Callable[..., Flask], backend: str) -> None:
    processors.RUN_LOG.clear()
    app = make_app(backend, redis=True)
    locks = app.extensions["async_task"].locks
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}).id
    locks.client.set(locks.key(task_id), "not-an-attempt-of-this-task", px=2000)  # overwrites leftovers
    started = time.monotonic()
    Consumer(app, concurrency=2, poll_interval=0.05).start()
    wait_until(lambda: task_row(app, task_id).status == "SUCCESS", timeout=10, message="runs after expiry")
    assert time.monotonic() - started >= 1.5
    # Given back once (or twice at the edge of the expiry), not once per poll.
    assert events_of(app, task_id, "RELEASED") <= 2
    assert task_row(app, task_id).attempts == 1
