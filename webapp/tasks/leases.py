"""A consumer's side of a task: claim due tasks, write each attempt's outcome, give attempts back.

A claim stamps a fresh ``claim_token`` on each task: the lease. Every later write for that
attempt is fenced by it (``fencing.fenced_update``), so an attempt whose lease was lost (the
task was recovered and claimed again, or cancelled) changes nothing; its result is recorded on
the timeline as refused.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ..workflows.resolution import (
    MemberChange,
    is_member,
    members_changed,
    settle_workflows,
    with_workflow_inputs,
)
from .attempt import TaskInfo
from .dialect_postgres import succeed_directly
from .direct import DirectConnection
from .fencing import LEASED, attempt_key, fenced_update, stored_result
from .limit_overrides import cached_overrides
from .limits import ClaimLimit
from .models import AsyncTask, TaskEvent, TaskEventKind, TaskStatus
from .notifying import notification_may_be_needed, notify_task_ended
from .processor import TaskResult
from .queries import ALL_TYPES, paused_task_types
from .retry import next_retry_delay
from .store import TaskStore, engine_state
from .transitions import TRANSITIONS

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 20_000
PAUSED_CACHE_SECONDS = 1.0  # claims run many times a second; pausing takes effect within this
# The events of transitions that end an attempt's lease (finish, release, recovery).
LEASE_ENDING_EVENTS = sorted({t.event.value for t in TRANSITIONS.values()
                              if LEASED in t.from_statuses and t.to_status not in (None, LEASED)})


@dataclass(frozen=True)
class FinishedAttempt:
    """A processor's verdict on one claimed attempt, waiting to be written."""

    task: TaskInfo
    result: TaskResult
    traceback: str | None = None


@dataclass(frozen=True)
class FinishOutcome:
    """What a worker's finish did: the status written, or ``None`` when the lease was lost."""

    status: str | None
    retry_delay: float | None = None


def clip(text: str) -> str:
    """An error message short enough to store."""
    return text if len(text) <= MAX_ERROR_LENGTH else text[:MAX_ERROR_LENGTH] + "… (truncated)"


class Leases(TaskStore):
    """Claim, finish and release attempts."""

    _made_work_due = False  # a finish released a workflow's waiting tasks: wake consumers at commit

    def claim_due_tasks(self, worker_id: str, limit: int, task_types: Sequence[str] | None = None,
                        direct: DirectConnection | None = None) -> list[TaskInfo]:
        """Atomically move up to ``limit`` due waiting tasks to PROCESSING for ``worker_id``.

        One statement: ``UPDATE ... WHERE id IN (SELECT id ... ORDER BY priority DESC,
        next_run_at, id LIMIT n [FOR UPDATE SKIP LOCKED]) RETURNING ...``. On PostgreSQL,
        SKIP LOCKED lets concurrent consumers take disjoint rows without waiting on each other;
        on SQLite the statement runs under the database's single write lock (BEGIN IMMEDIATE).
        Every claimed row gets a fresh ``claim_token``: the fencing token its finish must show.
        """
        if limit < 1:
            return []
        types = list(self.registry.task_types() if task_types is None else task_types)
        paused = self.paused_task_types_cached()
        types = [] if ALL_TYPES in paused else [t for t in types if t not in paused]
        limited = self.claim_limits(types)  # may read the overrides: before the rollback below
        self.session.rollback()  # end any read snapshot so the write starts fresh
        if not types:
            return []
        if limited:  # only then: a claim of types without limits pays nothing for the feature
            rows = self.dialect.claim_limited(self, worker_id, limit, types, limited, uuid.uuid4().hex, direct)
        else:
            rows = self.dialect.claim(self, worker_id, limit, types, uuid.uuid4().hex, direct)
        claimed = [
            TaskInfo(id=r.id, task_type=r.task_type, payload=r.payload, priority=r.priority,
                     retry_count=r.retry_count, max_retry_count=r.max_retry_count,
                     created_by=r.created_by, created_at=r.created_at, attempt=r.attempts,
                     claim_token=r.claim_token, retry_strategy=r.retry_strategy,
                     retry_interval=r.retry_interval, retry_max_delay=r.retry_max_delay,
                     retry_jitter=r.retry_jitter, notify_url=r.notify_url, workflow_id=r.workflow_id,
                     workflow_key=r.workflow_key)
            for r in rows
        ]
        claimed.sort(key=lambda t: (-t.priority, t.id))
        if any(task.workflow_id is not None for task in claimed):  # others pay nothing
            claimed = with_workflow_inputs(self, claimed)
        self.session.commit()
        return claimed

    def claim_limits(self, types: Sequence[str]) -> list[ClaimLimit]:
        """The concurrency and rate limits the claim must hold for ``types`` (types without any are left out)."""
        overrides = cached_overrides(self.session)  # operators' runtime changes, re-read every 2 s
        limits = ((task_type, self.registry.limits_of(task_type), overrides.get(task_type)) for task_type in types)
        effective = ((task_type, override.applied_to(found) if override else found)
                     for task_type, found, override in limits)
        return [ClaimLimit.of(task_type, found) for task_type, found in effective if found.limits_claims]

    def paused_task_types_cached(self) -> set[str]:
        """Paused task types, re-read at most once a second (claims run many times a second)."""
        engine = engine_state()
        now = time.monotonic()
        if engine.paused_cache is None or now - engine.paused_cache[0] > PAUSED_CACHE_SECONDS:
            engine.paused_cache = (now, set(paused_task_types(self.session)))
        return set(engine.paused_cache[1])

    def finish_task(self, task: TaskInfo, result: TaskResult, *, worker_id: str | None = None,
                    traceback: str | None = None) -> FinishOutcome:
        """Write a worker's outcome, only if its lease (``claim_token``) still holds.

        Runs in the session the processor used, so the processor's own writes and the final
        status commit together; if the lease was lost (the task was recovered and claimed again,
        or cancelled), everything is rolled back and the late result is recorded as refused.
        """
        self.begin_write()
        outcome = self._apply_outcome(task, result, worker_id, traceback)
        if outcome is None:
            self.session.rollback()
            self._record_late_result(task, result, worker_id)
            return FinishOutcome(None)
        self._commit_finish()
        return outcome

    def finish_many(self, finished: Sequence[FinishedAttempt], *, worker_id: str | None = None,
                    direct: DirectConnection | None = None) -> list[FinishOutcome]:
        """Finish many attempts in one transaction (processors that wrote nothing themselves).

        Successes, the common case, are one statement for the whole batch on PostgreSQL
        (``UPDATE ... FROM unnest(ids, tokens, results)``), still fenced by each claim token;
        failures take the single-task path inside the same transaction. Returns one outcome per
        input, in order; ``status=None`` where the lease had been lost. ``direct`` (PostgreSQL
        only) is a consumer's own autocommit connection for the all-successes batch.
        """
        if (direct is not None and all(f.result.success for f in finished)
                and not any(notification_may_be_needed(self.registry, f.task) for f in finished)
                and not any(f.task.workflow_id is not None for f in finished)):
            return self._succeed_directly(finished, worker_id, direct)
        self.session.rollback()
        self.begin_write()
        successes = [f for f in finished if f.result.success]
        won = self._succeed_in_bulk(successes, worker_id)
        # Keyed by attempt (id, claim token), not task id: one batch can hold a task's stale
        # attempt (recovered while its outcome queued) next to its new attempt.
        outcomes: dict[tuple[int, str], FinishOutcome] = {}
        for item in successes:
            if attempt_key(item.task) in won:
                outcomes[attempt_key(item.task)] = FinishOutcome(TaskStatus.SUCCESS.value)
                notify_task_ended(self, item.task, TaskStatus.SUCCESS.value, item.result)
        for item in finished:
            if not item.result.success:
                outcome = self._apply_outcome(item.task, item.result, worker_id, item.traceback)
                if outcome is not None:
                    outcomes[attempt_key(item.task)] = outcome
        self._commit_finish()
        for item in finished:
            if attempt_key(item.task) not in outcomes:
                self._record_late_result(item.task, item.result, worker_id)
        return [outcomes.get(attempt_key(item.task), FinishOutcome(None)) for item in finished]

    def _succeed_directly(self, finished: Sequence[FinishedAttempt], worker_id: str | None,
                          direct: DirectConnection) -> list[FinishOutcome]:
        """The common batch (all successes, nobody to notify): one autocommit statement."""
        rows = succeed_directly(direct, finished, worker_id)
        won = {(row.id, row.token) for row in rows}
        too_late = [f for f in finished if (f.task.id, f.task.claim_token) in
                    {(row.id, row.token) for row in rows if row.cancel_requested_at is not None}]
        if too_late:
            self.begin_write()
            self.write_events([self._cancel_too_late(f.task, TaskStatus.SUCCESS.value, worker_id)
                               for f in too_late])
            self.session.commit()
        outcomes = []
        for item in finished:
            if attempt_key(item.task) in won:
                outcomes.append(FinishOutcome(TaskStatus.SUCCESS.value))
            else:
                self._record_late_result(item.task, item.result, worker_id)
                outcomes.append(FinishOutcome(None))
        return outcomes

    def _succeed_in_bulk(self, successes: Sequence[FinishedAttempt], worker_id: str | None
                         ) -> set[tuple[int, str]]:
        """Fenced SUCCESS of many attempts; returns the (task id, claim token) of those that won."""
        if not successes:
            return set()
        if self.dialect.resolves_in_succeed and any(item.task.workflow_id is not None for item in successes):
            # One statement: successes, workflow counts and released dependents (PostgreSQL).
            resolved = self.dialect.succeed_resolving(self, successes, worker_id)
            won, too_late = resolved.won, resolved.too_late
            if settle_workflows(self, resolved.settle_ids) or resolved.released:
                self.dialect.wake_consumers(self.session)
                self._made_work_due = True
        else:
            won, too_late = self.dialect.succeed(self, successes, worker_id)
            self._resolve_workflows([item.task for item in successes if attempt_key(item.task) in won],
                                    TaskStatus.SUCCESS.value)
        self.write_events([self._cancel_too_late(item.task, TaskStatus.SUCCESS.value, worker_id)
                           for item in successes if attempt_key(item.task) in too_late])
        return won

    def _apply_outcome(self, task: TaskInfo, result: TaskResult, worker_id: str | None,
                       traceback: str | None) -> FinishOutcome | None:
        """The fenced UPDATE of one attempt's outcome plus its event (no commit); None if fenced out."""
        now = self.now()
        values: dict[str, Any] = {"updated_at": now}
        retry_delay: float | None = None
        attempt = {"attempt": task.attempt, "worker_id": worker_id}
        if result.success:
            status = TaskStatus.SUCCESS.value
            values.update(status=status, result=stored_result(result.data), error=None, finished_at=now)
            event = self.transition_event("succeed", task.id, **attempt)
        elif result.is_cancelled:
            status = TaskStatus.CANCELLED.value
            message = clip(result.message or "cancelled")
            values.update(status=status, error=message, finished_at=now)
            event = self.transition_event("honour_cancel", task.id, message=message, **attempt)
        else:
            message = clip(result.message or "failed without a message")
            if result.retryable and task.retry_count < task.max_retry_count:
                status = TaskStatus.RETRYING.value
                retry_delay = next_retry_delay(task.retry_count + 1, task.retry_strategy,
                                               task.retry_interval, task.retry_max_delay, task.retry_jitter)
                values.update(status=status, retry_count=AsyncTask.retry_count + 1, error=message,
                              next_run_at=self.now_plus(retry_delay), worker_id=None)
                event = self.transition_event(
                    "schedule_retry", task.id, traceback=traceback, **attempt,
                    message=f"{message} (retry {task.retry_count + 1} of {task.max_retry_count} "
                            f"in {retry_delay:g}s)")
            else:
                status = TaskStatus.FAILURE.value
                why = "" if result.retryable else " (not retryable)"
                values.update(status=status, error=message, finished_at=now, result=stored_result(result.data))
                event = self.transition_event("fail", task.id, message=message + why, traceback=traceback,
                                              **attempt)
        values.update(claim_token=None)
        # A failed attempt of a task whose cancel was requested is not retried: it ends CANCELLED.
        retry_unless_cancelled = ([AsyncTask.cancel_requested_at.is_(None)]
                                  if status == TaskStatus.RETRYING.value else [])
        changed = self._fenced_write(task, values, *retry_unless_cancelled)
        if changed is None and retry_unless_cancelled:
            status, retry_delay = TaskStatus.CANCELLED.value, None
            message = clip(f"cancelled: the attempt failed after a cancel was requested ({message})")
            changed = self._fenced_write(task, {"status": status, "error": message, "finished_at": now,
                                                "updated_at": now, "claim_token": None})
            event = self.transition_event("honour_cancel", task.id, message=message, traceback=traceback,
                                          **attempt)
        if changed is None:
            return None
        events = [event]
        if changed.cancel_requested_at is not None and status != TaskStatus.CANCELLED.value:
            events.append(self._cancel_too_late(task, status, worker_id))
        self.write_events(events)
        if status in (TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value):
            notify_task_ended(self, task, status, result)
        self._resolve_workflows([task], status)
        return FinishOutcome(status, retry_delay)

    def _resolve_workflows(self, tasks: Sequence[TaskInfo], status: str) -> None:
        """A workflow's tasks that ended ``status``: release or cancel downstream, count, callbacks.

        In the finishing transaction; tasks outside a workflow cost nothing. Work made due here
        wakes consumers when the transaction commits (``_commit_finish``).
        """
        changes = [MemberChange(task.id, task.workflow_id, None, status) for task in tasks
                   if task.workflow_id is not None and is_member(task.workflow_id, task.workflow_key)]
        if changes and status != TaskStatus.RETRYING.value and members_changed(self, changes):
            self.dialect.wake_consumers(self.session)
            self._made_work_due = True

    def _commit_finish(self) -> None:
        """Commit a finish; consumers here are woken if it released a workflow's waiting tasks."""
        self.session.commit()
        if self._made_work_due:
            self._made_work_due = False
            self.announce_new_work()

    def _fenced_write(self, task: TaskInfo, values: dict[str, Any], *conditions: Any) -> Any:
        """UPDATE the task only while this attempt still holds its lease; the row or None."""
        return self.session.execute(
            fenced_update(task.id, task.claim_token, *conditions).values(**values)
            .returning(AsyncTask.cancel_requested_at)
        ).first()

    def _cancel_too_late(self, task: TaskInfo, status: str, worker_id: str | None) -> dict[str, Any]:
        return self.event(task.id, TaskEventKind.CANCEL_TOO_LATE, attempt=task.attempt, worker_id=worker_id,
                          message=f"the cancel request was not honoured; the attempt ended {status}")

    def _record_late_result(self, task: TaskInfo, result: TaskResult, worker_id: str | None) -> None:
        outcome = "success" if result.success else f"failure: {result.message}"
        log.warning("task %s: late result refused (lease of attempt %s lost): %s", task.id, task.attempt,
                    outcome)
        try:
            self.begin_write()
            if self.session.get(AsyncTask, task.id) is not None:
                self.write_events([self.event(
                    task.id, TaskEventKind.LATE_RESULT_REFUSED, attempt=task.attempt, worker_id=worker_id,
                    message=clip(f"result of attempt {task.attempt} arrived after its lease was lost; "
                                 f"discarded ({outcome})"))])
            self.session.commit()
        except Exception:
            self.session.rollback()
            log.exception("task %s: could not record the refused late result", task.id)

    def release_tasks(self, tasks: Iterable[TaskInfo], worker_id: str | None = None,
                      reason: str = "worker stopped before the task finished", *, due_in: float = 0,
                      count_attempt: bool = True) -> list[int]:
        """PROCESSING -> PENDING for leases this worker still holds (graceful shutdown, give-back).

        ``due_in`` seconds makes the task due again later (nobody is woken for it), and
        ``count_attempt=False`` takes back the attempt the claim counted (a claim given back
        at once because its Redis lock is held elsewhere never ran).
        """
        released: list[int] = []
        values: dict[str, Any] = {"status": TaskStatus.PENDING.value, "claim_token": None, "worker_id": None,
                                  "started_at": None}
        if not count_attempt:
            values["attempts"] = AsyncTask.attempts - 1
        for task in tasks:
            self.begin_write()
            changed = self.session.execute(
                fenced_update(task.id, task.claim_token)
                .values(next_run_at=self.now_plus(due_in) if due_in > 0 else self.now(),
                        updated_at=self.now(), **values)
                .returning(AsyncTask.id)
            ).first()
            if changed is not None:
                released.append(task.id)
                self.write_events([self.transition_event("release", task.id, attempt=task.attempt,
                                                         worker_id=worker_id, message=reason)])
            if changed is not None and due_in <= 0:
                self.commit_new_work()
            else:
                self.session.commit()
        return released

    def lock_holders_done(self, holders: Iterable[tuple[int, int, str]]) -> set[int]:
        """Of (task id, earlier attempt, lock value): the tasks whose lock belongs to a finished attempt.

        A Redis lock outlives its attempt when the worker stopped between the outcome's commit
        and the release. It is that attempt's when the earlier attempt's lease-ending event
        (succeed, retry, fail, cancel, release, recovery) is on the timeline and no PROCESSING
        attempt holds the lock's value as its claim token.
        """
        wanted = [(task_id, attempt, value) for task_id, attempt, value in holders if attempt >= 1]
        if not wanted:
            return set()
        ended = {(row.task_id, row.attempt) for row in self.session.execute(
            select(TaskEvent.task_id, TaskEvent.attempt)
            .where(TaskEvent.task_id.in_({task_id for task_id, _, _ in wanted}),
                   TaskEvent.kind.in_(LEASE_ENDING_EVENTS)))}
        leased = set(self.session.scalars(
            select(AsyncTask.claim_token).where(AsyncTask.status == LEASED,
                                                AsyncTask.claim_token.in_({value for _, _, value in wanted}))))
        self.session.rollback()
        return {task_id for task_id, attempt, value in wanted
                if (task_id, attempt) in ended and value not in leased}

    def attempts_held_by(self, worker_id: str, older_than: float) -> list[TaskInfo]:
        """PROCESSING attempts leased to ``worker_id`` that started more than ``older_than`` s ago."""
        rows = self.session.execute(
            select(AsyncTask.id, AsyncTask.task_type, AsyncTask.claim_token, AsyncTask.attempts,
                   AsyncTask.priority, AsyncTask.retry_count, AsyncTask.max_retry_count)
            .where(AsyncTask.status == LEASED, AsyncTask.worker_id == worker_id,
                   AsyncTask.started_at < self.now_plus(-older_than))
        ).all()
        self.session.rollback()
        return [TaskInfo(id=r.id, task_type=r.task_type, payload={}, priority=r.priority,
                         retry_count=r.retry_count, max_retry_count=r.max_retry_count, created_by=None,
                         created_at=None, attempt=r.attempts, claim_token=r.claim_token or "")
                for r in rows]
