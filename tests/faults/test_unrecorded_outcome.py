"""An attempt whose outcome cannot be written, twice, is given back (issue 10 item 16's fault run).

After ``pg_terminate_backend`` a worker that finishes a task in its own transaction can lose
the connection for the outcome and again for the "could not commit" failure written after it.
The exception used to escape the worker thread with the attempt still counted as held, so the
heartbeat's give-back of forgotten attempts skipped it and the task stayed PROCESSING until
max-processing-time (the fault suite saw one task stuck this way for over a minute). Here the
two writes are made to fail by injection (the database stays up), as the kills made them fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy.exc import OperationalError

from tests.conftest import wait_until
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.consumer import Consumer

pytestmark = [pytest.mark.postgres]


def status(app: Flask, task_id: int) -> str:
    with app.app_context():
        try:
            return AsyncTaskService().require_task(task_id).status
        finally:
            db.session.remove()


def test_a_twice_unwritable_outcome_is_given_back_and_run_again(make_app: Callable[..., Flask],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app("postgres", ASYNC_TASK_PROCESSORS=["tests.processors"], ASYNC_TASK_HEARTBEAT_INTERVAL=0.2,
                   ASYNC_TASK_MAX_PROCESSING_TIME=120)
    with app.app_context():
        task_id = AsyncTaskService().submit_task("WRITES_THEN_FAILS", {"fail": False}).id
        db.session.remove()
    failures_left = [2]  # the outcome, then the "could not commit" failure written after it
    finish_task = AsyncTaskService.finish_task

    def connection_lost_twice(self: AsyncTaskService, task: Any, *args: Any, **kwargs: Any) -> Any:
        if task.id == task_id and failures_left[0]:
            failures_left[0] -= 1
            raise OperationalError("UPDATE async_task ...", {}, psycopg.OperationalError(
                "consuming input failed: server closed the connection unexpectedly"))
        return finish_task(self, task, *args, **kwargs)

    monkeypatch.setattr(AsyncTaskService, "finish_task", connection_lost_twice)
    Consumer(app, concurrency=1, poll_interval=0.2).start()
    wait_until(lambda: failures_left[0] == 0, timeout=10, message="both writes of the first attempt failed")
    # Given back by the next heartbeats (held by a live worker that no longer tracks it), run again.
    wait_until(lambda: status(app, task_id) == "SUCCESS", timeout=10,
               message="the task runs again well before max-processing-time")
    with app.app_context():
        row = AsyncTaskService().require_task(task_id)
        assert row.attempts == 2
        kinds = [event.kind for event in AsyncTaskService().events_for(task_id)]
        db.session.remove()
    assert "RELEASED" in kinds and kinds[-1] == "SUCCEEDED"
