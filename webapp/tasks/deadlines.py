"""Start-by deadlines: a waiting task past its ``start_by`` is never started and ends CANCELLED.

The claim already skips such tasks (``start_by > now`` in every claim statement), so a deadline
holds to the instant however late the sweep runs; the sweep (a consumer job, every heartbeat
interval) then ends them with the ``expire`` transition and "start deadline passed" on the
timeline, a paused task type's tasks included.
"""

from __future__ import annotations

from sqlalchemy import select, update

from .models import AsyncTask
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
        expired = sorted(self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(overdue.scalar_subquery()), AsyncTask.status.in_(starting_statuses("expire")))
            .values(status=TRANSITIONS["expire"].to_status, error=START_DEADLINE_PASSED, finished_at=now,
                    updated_at=now, claim_token=None, worker_id=None)
            .returning(AsyncTask.id)
            .execution_options(synchronize_session=False)
        ).scalars())
        self.write_events([self.transition_event("expire", task_id, message=START_DEADLINE_PASSED)
                           for task_id in expired])
        self.session.commit()
        return expired
