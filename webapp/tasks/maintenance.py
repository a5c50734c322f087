"""Keeping the queue healthy: worker registration and heartbeats, recovery of orphans, purging.

Recovery takes over attempts whose worker stopped heartbeating or that ran too long, fenced by
the claim token it read (a worker finishing at that moment wins or loses cleanly). Purging
deletes old finished tasks in small batches so nobody waits long behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, update

from ..workflows.resolution import changes_of, members_changed
from .attempt import TaskInfo
from .errors import ValidationError
from .fencing import LEASED, fenced_update
from .models import (
    TERMINAL_STATUSES,
    AsyncTask,
    Notification,
    TaskEvent,
    TaskStatus,
    Worker,
    utcnow,
)
from .notifying import notify_task_ended
from .processor import TaskResult
from .queries import MISSED_HEARTBEATS
from .store import TaskStore
from .validation import parse_time, validate_status

log = logging.getLogger(__name__)

MAX_PURGE_BATCH = 100_000


class Maintenance(TaskStore):
    """Workers' lifecycle, recovery of their orphaned attempts, and purging of finished tasks."""

    def register_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int,
                        heartbeat_interval: float) -> None:
        """Record a starting worker as RUNNING, stamped by the database clock."""
        self.begin_write()
        self.session.add(Worker(id=worker_id, hostname=hostname, pid=pid, concurrency=concurrency,
                                heartbeat_interval=heartbeat_interval, busy=0, status="RUNNING",
                                started_at=utcnow(), last_heartbeat_at=utcnow()))
        self.session.commit()
        self.session.execute(update(Worker).where(Worker.id == worker_id)
                             .values(started_at=self.now(), last_heartbeat_at=self.now()))
        self.session.commit()

    def heartbeat(self, worker_id: str, busy: int, processed: int = 0, failed: int = 0) -> bool:
        """Stamp the worker alive; False if it had been declared dead (its tasks were recovered)."""
        self.begin_write()
        changed = self.session.execute(
            update(Worker).where(Worker.id == worker_id, Worker.status == "RUNNING")
            .values(last_heartbeat_at=self.now(), busy=busy, processed=processed, failed=failed)
            .returning(Worker.id).execution_options(synchronize_session=False)
        ).first()
        self.session.commit()
        return changed is not None

    def revive_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int,
                      heartbeat_interval: float) -> None:
        """A worker declared dead came back (it was paused): mark it running again."""
        self.begin_write()
        changed = self.session.execute(
            update(Worker).where(Worker.id == worker_id)
            .values(status="RUNNING", last_heartbeat_at=self.now(), stopped_at=None)
            .returning(Worker.id).execution_options(synchronize_session=False)
        ).first()
        self.session.commit()
        if changed is None:
            self.register_worker(worker_id, hostname, pid, concurrency, heartbeat_interval)

    def stop_worker(self, worker_id: str) -> None:
        """Record a worker's orderly stop."""
        self.begin_write()
        self.session.execute(update(Worker).where(Worker.id == worker_id)
                             .values(status="STOPPED", stopped_at=self.now(), busy=0)
                             .execution_options(synchronize_session=False))
        self.session.commit()

    def recover_orphans(self, max_processing_time: float, heartbeat_interval: float,
                        before_commit: Callable[[list[int]], None] | None = None) -> list[int]:
        """Send PROCESSING tasks whose worker is dead, or that ran too long, back to PENDING.

        A worker is dead when it missed three heartbeats (or stopped without releasing). A task
        recovered more than ``max_retry_count + 1`` times ends in FAILURE instead, so a task that
        kills its worker every time (a poison pill) cannot loop forever. Returns recovered ids.
        """
        stale_before = self.now_plus(-MISSED_HEARTBEATS * heartbeat_interval)
        started_before = self.now_plus(-max_processing_time)
        self.session.rollback()
        self.begin_write()
        # A worker frozen mid-transaction (SIGSTOP, a paused VM) keeps its rows locked; waiting
        # on them would stall every recovery in the cluster. Skip them: its tasks are still
        # found below (reads do not wait), and its row is marked at a later sweep.
        stale_workers = self.skip_locked(
            select(Worker.id).where(Worker.status == "RUNNING", Worker.last_heartbeat_at < stale_before))
        dead = self.session.execute(
            update(Worker).where(Worker.id.in_(stale_workers.scalar_subquery()))
            .values(status="DEAD", busy=0).returning(Worker.id).execution_options(synchronize_session=False)
        ).scalars().all()
        live_worker = exists().where(Worker.id == AsyncTask.worker_id, Worker.status == "RUNNING",
                                     Worker.last_heartbeat_at >= stale_before)
        orphaned = and_(AsyncTask.status == LEASED, or_(~live_worker, AsyncTask.started_at < started_before))
        # A row locked by a frozen (or finishing) worker: skip, not wait.
        orphans = self.skip_locked(
            select(AsyncTask.id, AsyncTask.claim_token, AsyncTask.worker_id, AsyncTask.attempts,
                   AsyncTask.recovery_count, AsyncTask.max_retry_count, AsyncTask.started_at,
                   AsyncTask.task_type, AsyncTask.created_by, AsyncTask.retry_count, AsyncTask.payload,
                   AsyncTask.priority, AsyncTask.created_at, AsyncTask.notify_url)
            .where(orphaned), of=AsyncTask)
        recovered: list[int] = []
        given_up: list[Any] = []  # rows of a workflow's tasks that recovery gave up on
        events = []
        limit_time = self.db_now() - timedelta(seconds=max_processing_time)
        for c in self.session.execute(orphans).all():
            overdue = c.started_at is not None and c.started_at < limit_time
            why = (f"ran longer than max-processing-time ({max_processing_time:g}s)" if overdue
                   else f"worker {c.worker_id} stopped heartbeating")
            give_up = c.recovery_count + 1 > c.max_retry_count + 1
            values: dict[str, Any] = {"claim_token": None, "worker_id": None, "updated_at": self.now(),
                                      "recovery_count": AsyncTask.recovery_count + 1}
            attempt = {"attempt": c.attempts, "worker_id": c.worker_id}
            if give_up:
                message = (f"recovered {c.recovery_count} times already (limit max_retry_count + 1 = "
                           f"{c.max_retry_count + 1}); last: {why}; giving up")
                values.update(status=TaskStatus.FAILURE.value, finished_at=self.now(), error=message)
                event = self.transition_event("give_up", c.id, message=message, **attempt)
            else:
                values.update(status=TaskStatus.PENDING.value, next_run_at=self.now(), started_at=None)
                event = self.transition_event("recover", c.id, message=why, **attempt)
            changed = self.session.execute(
                fenced_update(c.id, c.claim_token).values(**values)
                .returning(AsyncTask.id, AsyncTask.workflow_id, AsyncTask.workflow_key)).first()
            if changed is None:
                continue
            recovered.append(c.id)
            events.append(event)
            if give_up and changed.workflow_id is not None:
                given_up.append(changed)
            if give_up:
                failed_info = TaskInfo(id=c.id, task_type=c.task_type, payload=c.payload,
                                       priority=c.priority, retry_count=c.retry_count,
                                       max_retry_count=c.max_retry_count, created_by=c.created_by,
                                       created_at=c.created_at, attempt=c.attempts, claim_token="",
                                       notify_url=c.notify_url)
                notify_task_ended(self, failed_info, TaskStatus.FAILURE.value,
                                  TaskResult.failure(values["error"], retryable=False))
        self.write_events(events)
        members_changed(self, changes_of(given_up, None, TaskStatus.FAILURE.value))
        if recovered and before_commit is not None:
            # e.g. drop the dead attempts' Redis locks before anyone can claim the tasks again
            before_commit(recovered)
        if recovered:
            self.commit_new_work()
        else:
            self.session.commit()
        if dead:
            log.warning("workers declared dead (missed heartbeats): %s", ", ".join(dead))
        if recovered:
            log.warning("recovered %d orphaned task(s): %s", len(recovered), recovered)
        return recovered

    def purge_finished(self, finished_before: datetime | str, statuses: Sequence[str] = TERMINAL_STATUSES,
                       batch_size: int = 1000, actor: str | None = None) -> int:
        """Delete finished tasks (and their events and notifications) older than a time, in batches.

        Small batches keep each transaction short, so workers and the console never wait long
        behind a purge. Only SUCCESS, FAILURE and CANCELLED tasks can be purged. Returns the count.
        """
        finished_before = parse_time(finished_before, "finished_before")
        chosen = [validate_status(status) for status in statuses]
        not_terminal = [status for status in chosen if status not in TERMINAL_STATUSES]
        if not_terminal or not chosen:
            raise ValidationError(f"only finished tasks can be purged (SUCCESS, FAILURE, CANCELLED), "
                                  f"not {', '.join(not_terminal) or 'nothing'}", field="status")
        if (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                or not 1 <= batch_size <= MAX_PURGE_BATCH):
            raise ValidationError(f"batch_size must be an integer from 1 to {MAX_PURGE_BATCH}", field="batch_size")
        total = 0
        while True:
            self.session.rollback()
            self.begin_write()
            ids = list(self.session.scalars(
                select(AsyncTask.id)
                .where(AsyncTask.status.in_(chosen), AsyncTask.finished_at < finished_before)
                .order_by(AsyncTask.id).limit(batch_size)))
            if not ids:
                self.session.rollback()
                break
            self._delete_tasks(ids, chosen)
            self.session.commit()
            total += len(ids)
        if actor is not None:
            self.audit(actor, "task.purge", "task", None,
                       detail={"finished_before": finished_before.isoformat(), "statuses": chosen,
                               "deleted": total})
            self.session.commit()
        return total

    def _delete_tasks(self, ids: list[int], statuses: list[str]) -> None:
        # Children first: SQLite only cascades with foreign keys on, and explicit is clearer.
        self.session.execute(delete(TaskEvent).where(TaskEvent.task_id.in_(ids)))
        self.session.execute(delete(Notification).where(Notification.task_id.in_(ids)))
        self.session.execute(update(AsyncTask).where(AsyncTask.parent_id.in_(ids)).values(parent_id=None)
                             .execution_options(synchronize_session=False))
        self.session.execute(delete(AsyncTask).where(AsyncTask.id.in_(ids), AsyncTask.status.in_(statuses))
                             .execution_options(synchronize_session=False))

