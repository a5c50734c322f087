"""An operator's transitions: cancel (or ask a running task to stop), retry, edit and retry, pause.

Each is one conditional UPDATE whose starting statuses come from the transition table, so an
operator racing a worker or another operator has exactly one winner; the loser gets
``InvalidTransition`` worded by ``transitions.refusal_message``. Actions taken by a named actor
are audited, refusals included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

from sqlalchemy import update

from ..workflows.resolution import operator_changed
from .errors import InvalidTransition, TaskNotFound
from .masking import declared_sensitive_fields, restore_masked
from .models import AsyncTask, TaskTypeState
from .queries import ALL_TYPES, get_task, require_task
from .store import TaskStore, engine_state
from .submit import Submitter
from .transitions import TRANSITIONS, may, refusal_message, starting_statuses
from .validation import validate_task_id

# How many times a cancel re-reads a task that a worker moved under it before giving up.
CANCEL_ROUNDS = 5


class OperatorActions(TaskStore):
    """Cancel, retry, resubmit and pause, as an operator (or an application acting as one)."""

    def cancel_task(self, task_id: Any, actor: str | None = None) -> AsyncTask:
        """PENDING or RETRYING -> CANCELLED at once; PROCESSING -> a cancel request.

        A running task cannot be stopped from outside: the request is recorded
        (``cancel_requested_at``) and the processor sees it through ``is_cancel_requested()`` or
        ``report_progress``; if it ignores it, the task ends normally and the request is recorded
        as too late. SUCCESS, FAILURE and CANCELLED tasks are refused with InvalidTransition.
        """
        task_id = validate_task_id(task_id)
        # Each round is one conditional UPDATE per branch; a round is lost only when a worker
        # moved the task between our two statements (finished an attempt, scheduled a retry,
        # claimed it again), so a few rounds always settle it.
        for _ in range(CANCEL_ROUNDS):
            self.session.rollback()
            self.begin_write()
            if self.cancel_waiting([task_id], actor):
                if actor is not None:
                    self.audit(actor, "task.cancel", "task", task_id)
                self.session.commit()
                return require_task(self.session, task_id)
            if self._request_cancel(task_id, actor):
                return require_task(self.session, task_id)
            self.session.rollback()
            task = get_task(self.session, task_id)
            if task is None or not (may("cancel", task.status) or may("request_cancel", task.status)):
                break
            if may("request_cancel", task.status) and task.cancel_requested_at is not None:
                return task  # already requested: asking twice changes nothing
        self._refuse(task_id, actor, "cancel")

    def cancel_waiting(self, task_ids: Sequence[int], actor: str | None, message: str | None = None) -> list[int]:
        """PENDING/RETRYING -> CANCELLED for these ids, with their events; the ids that changed.

        No commit: ``cancel_task`` and bulk cancel (``bulk.py``) add their audit and commit.
        """
        now = self.now()
        return self._take_transition("cancel", task_ids, actor, message, finished_at=now, updated_at=now,
                                     claim_token=None, worker_id=None)

    def _request_cancel(self, task_id: int, actor: str | None) -> bool:
        """Record a cancel request on the running attempt, with its event; committed when True."""
        requested = self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id == task_id, AsyncTask.status.in_(starting_statuses("request_cancel")),
                   AsyncTask.cancel_requested_at.is_(None))
            .values(cancel_requested_at=self.now(), updated_at=self.now())
            .returning(AsyncTask.attempts)
            .execution_options(synchronize_session=False)
        ).first()
        if requested is None:
            return False
        self.write_events([self.transition_event(
            "request_cancel", task_id, actor=actor, attempt=requested.attempts,
            message="cancel requested while running; the processor decides when to stop")])
        if actor is not None:
            self.audit(actor, "task.cancel_request", "task", task_id)
        self.session.commit()
        return True

    def retry_task(self, task_id: Any, actor: str | None = None) -> AsyncTask:
        """FAILURE -> PENDING with the retry count back at 0. Any other status is refused."""
        task_id = validate_task_id(task_id)
        self.begin_write()
        if not self.retry_failed([task_id], actor):
            self.session.rollback()
            self._refuse(task_id, actor, "retry")
        if actor is not None:
            self.audit(actor, "task.retry", "task", task_id)
        self.commit_new_work()
        return require_task(self.session, task_id)

    def retry_failed(self, task_ids: Sequence[int], actor: str | None, message: str | None = None) -> list[int]:
        """FAILURE -> PENDING (retry count back at 0) for these ids, with events; the ids that changed.

        No commit: ``retry_task`` and bulk retry (``bulk.py``) add their audit and commit.
        """
        now = self.now()
        return self._take_transition("retry", task_ids, actor, message, retry_count=0, recovery_count=0,
                                     next_run_at=now, updated_at=now, finished_at=None, started_at=None,
                                     claim_token=None, worker_id=None)

    def _take_transition(self, name: str, task_ids: Sequence[int], actor: str | None, message: str | None,
                         **values: Any) -> list[int]:
        """Move the tasks among ``task_ids`` that may take transition ``name`` to its target status.

        One conditional UPDATE naming the transition's starting statuses, plus its events; the
        ids that changed, ascending. No commit. Tasks of a workflow move its counts (and may
        cancel their dependents, see ``workflows.resolution``).
        """
        rows = self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(task_ids), AsyncTask.status.in_(starting_statuses(name)))
            .values(status=TRANSITIONS[name].to_status, **values)
            .returning(AsyncTask.id, AsyncTask.workflow_id, AsyncTask.workflow_key)
            .execution_options(synchronize_session=False)
        ).all()
        changed = sorted(row.id for row in rows)
        self.write_events([self.transition_event(name, task_id, actor=actor, message=message)
                           for task_id in changed])
        operator_changed(self, name, [row for row in rows if row.workflow_id is not None], actor)
        return changed

    def resubmit_task(self, task_id: Any, payload: Any, actor: str | None = None,
                      principal: str | None = None) -> AsyncTask:
        """Edit and retry: a new task with ``payload`` linked to a FAILURE or CANCELLED original.

        The original row is never changed; both timelines record the link. The new task is
        submitted by ``principal``, or by the original's principal when none is given (so a
        token that reaches only its own tasks still reaches its resubmitted ones).
        """
        original = require_task(self.session, task_id)
        if not may("resubmit", original.status):
            raise InvalidTransition(refusal_message("resubmit", original.status, original.id),
                                    current_status=original.status)
        # A sensitive field sent back as the mask (the operator saw only that) keeps its value.
        payload = restore_masked(original.payload, payload,
                                 declared_sensitive_fields(self.registry.get(original.task_type)))
        outcome = self.part(Submitter).submit(
            original.task_type, payload, original.priority, original.created_by,
            notify_url=original.notify_url, parent_id=original.id, commit=False,
            principal=principal if principal is not None else original.principal)
        new_task = outcome.task
        self.write_events([self.transition_event("resubmit", original.id, actor=actor,
                                                 message=f"edited and resubmitted as task {new_task.id}")])
        if actor is not None:
            self.audit(actor, "task.resubmit", "task", original.id, detail={"new_task_id": new_task.id})
        new_id = new_task.id
        self.commit_new_work()
        return require_task(self.session, new_id)

    def submit_for_operator(self, task_type: str, payload: Any, priority: int | None, run_at: Any,
                            actor: str) -> AsyncTask:
        """An operator's new task (the console's form): checked like any submit, audited as
        ``task.submit`` in the same transaction, submitted by ``user:<actor>``."""
        outcome = self.part(Submitter).submit(task_type, payload, priority, None, run_at, commit=False,
                                              principal=f"user:{actor}")
        new_id = outcome.task.id
        self.audit(actor, "task.submit", "task", new_id, detail={"task_type": task_type})
        self.commit_new_work()
        return require_task(self.session, new_id)

    def _refuse(self, task_id: int, actor: str | None, action: str) -> NoReturn:
        if actor is not None:
            # The refusal is audited: on SQLite a read later upgraded to a write can fail with
            # "database is locked", so take the write lock before reading.
            self.session.rollback()
            self.begin_write()
        task = get_task(self.session, task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        if actor is not None:
            self.audit(actor, f"task.{action}", "task", task_id, outcome="refused",
                       detail={"status": task.status})
            self.session.commit()
        raise InvalidTransition(refusal_message(action, task.status, task_id), current_status=task.status)

    def set_paused(self, task_type: str, paused: bool, actor: str | None) -> None:
        """Stop (``paused``) or resume claiming ``task_type`` ('*': every type); audited."""
        if task_type != ALL_TYPES:
            self.processor_for(task_type)
        self.begin_write()
        state = self.session.get(TaskTypeState, task_type)
        if state is None:
            state = TaskTypeState(task_type=task_type)
            self.session.add(state)
        state.paused = paused
        state.changed_at = self.db_now()
        state.changed_by = actor
        self.audit(actor, "task_type.pause" if paused else "task_type.resume", "task_type", task_type)
        if paused:
            self.session.commit()
        else:
            self.commit_new_work()
        engine_state().paused_cache = None
