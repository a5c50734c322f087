"""A stale attempt and its successor finished in one batch (found by the SQLite pressure test).

Under heavy load a worker can be declared dead while an attempt's outcome waits in its
finisher queue; the task is recovered, claimed again (possibly by the same worker), and both
outcomes then reach ``finish_many`` in one batch. Expected: only the attempt holding the current
claim token succeeds: one SUCCEEDED event (the new attempt's), the stale one recorded as
LATE_RESULT_REFUSED, one notification, and the outcomes say so in input order. (Before the fix
both were counted as won by task id: two SUCCEEDED events on SQLite and two notifications on
both backends.)
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests.faults.processors import RACE_TYPE
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.models import Notification
from webapp.tasks.service import FinishedAttempt

pytestmark = [pytest.mark.slow]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stale_first", [True, False], ids=["stale-first", "stale-last"])
def test_only_the_current_attempt_of_a_task_wins_a_batch(make_app: Callable[..., Flask], backend: str,
                                                         stale_first: bool) -> None:
    app = make_app(backend, ASYNC_TASK_PROCESSORS=["tests.faults.processors"])
    with app.app_context():
        service = AsyncTaskService()
        task_id = service.submit_task(RACE_TYPE, {}, created_by="ops@example.com").id
        [stale] = service.claim_due_tasks("worker-a", 1)
        time.sleep(0.01)
        assert service.recover_orphans(max_processing_time=0.001, heartbeat_interval=0.5) == [task_id]
        [current] = service.claim_due_tasks("worker-a", 1)
        assert (stale.id, stale.attempt, current.attempt) == (task_id, 1, 2)

        batch = [FinishedAttempt(stale, TaskResult.success({"attempt": 1})),
                 FinishedAttempt(current, TaskResult.success({"attempt": 2}))]
        if not stale_first:
            batch.reverse()
        outcomes = {item.task.attempt: outcome.status
                    for item, outcome in zip(batch, service.finish_many(batch, worker_id="worker-a"), strict=True)}
        assert outcomes == {1: None, 2: "SUCCESS"}

        task = service.require_task(task_id)
        assert (task.status, task.result) == ("SUCCESS", {"attempt": 2})
        events = [(e.kind, e.attempt) for e in service.events_for(task_id)]
        assert [e for e in events if e[0] == "SUCCEEDED"] == [("SUCCEEDED", 2)], events
        assert ("LATE_RESULT_REFUSED", 1) in events, events
        notes = db.session.scalar(select(func.count()).select_from(Notification)
                                  .where(Notification.task_id == task_id))
        assert notes == 1, f"{notes} notifications for one success"
        db.session.remove()
