"""Start-by deadlines: a waiting task past its ``start_by`` is never started and ends CANCELLED.

The claim already skips such tasks (``start_by > now`` in every claim statement), so a deadline
holds to the instant however late the sweep runs; the sweep (a consumer job, every heartbeat
interval) then ends them with the ``expire`` transition and "start deadline passed" on the
timeline, a paused task type's tasks included. An expired task notifies like a failed one (in
the same transaction): its creator when the processor asks for failure notifications, and its
``notify_url``.
"""

from __future__ import annotations

from sqlalchemy import select, update

from .attempt import TaskInfo
from .models import AsyncTask, TaskStatus
from .notifying import notify_task_ended
from .processor import TaskResult
from .store import TaskStore
from .transitions import TRANSITIONS, starting_statuses

START_DEADLINE_PASSED = "start deadline passed"
EXPIRE_BATCH = 1000  # tasks ended per sweep statement (the next sweep takes the rest)


class Deadlines(TaskStore):
    """The start-deadline sweep."""

    def expire_overdue(self) -> list[int]:
        """End waiting tasks whose ``start_by`` has passed (CANCELLED, with their events); their ids."""
        self.begin_write()
        now = self.now()
        overdue = self.dialect.skip_locked(
            select(AsyncTask.id)
            .where(AsyncTask.start_by.is_not(None), AsyncTask.start_by <= now,
                   AsyncTask.status.in_(starting_statuses("expire")))
            .limit(EXPIRE_BATCH))
        ended = self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(overdue.scalar_subquery()), AsyncTask.status.in_(starting_statuses("expire")))
            .values(status=TRANSITIONS["expire"].to_status, error=START_DEADLINE_PASSED, finished_at=now,
                    updated_at=now, claim_token=None, worker_id=None)
            .returning(AsyncTask.id, AsyncTask.task_type, AsyncTask.payload, AsyncTask.priority,
                       AsyncTask.retry_count, AsyncTask.max_retry_count, AsyncTask.created_by,
                       AsyncTask.created_at, AsyncTask.attempts, AsyncTask.notify_url)
            .execution_options(synchronize_session=False)
        ).all()
        expired = sorted(row.id for row in ended)
        self.write_events([self.transition_event("expire", task_id, message=START_DEADLINE_PASSED)
                           for task_id in expired])
        for row in ended:
            task = TaskInfo(id=row.id, task_type=row.task_type, payload=row.payload, priority=row.priority,
                            retry_count=row.retry_count, max_retry_count=row.max_retry_count,
                            created_by=row.created_by, created_at=row.created_at, attempt=row.attempts,
                            claim_token="", notify_url=row.notify_url)
            notify_task_ended(self, task, TaskStatus.CANCELLED.value,
                              TaskResult.failure(START_DEADLINE_PASSED, retryable=False))
        self.session.commit()
        return expired
