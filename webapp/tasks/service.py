"""``AsyncTaskService``: the one way in. Every state change of a task goes through here.

A thin facade: each call is handed to the module that owns its concern.

| concern | module |
| --- | --- |
| submit one or many tasks, idempotency, waking consumers | ``submit`` |
| an operator's cancel, retry, edit and retry, pause | ``actions`` |
| a consumer's claim, finish and release (the leases) | ``leases`` |
| workers, recovery of orphans, purging | ``maintenance`` |
| reads: tasks, filters, pages, timelines, workers | ``queries`` (dashboards: ``stats``) |
| input checks | ``validation`` |
| which transition may start where | ``transitions`` |
| what differs between PostgreSQL and SQLite | ``dialect_postgres``, ``dialect_sqlite`` |

Each transition is a single conditional ``UPDATE ... WHERE status IN (...)`` (plus the claim
token where a worker's lease is involved), so cancel, retry, recovery and a worker's finish
racing each other have exactly one winner; the loser sees zero rows and gets a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from ..workflows.actions import WorkflowActions
from ..workflows.resolution import workflow_summary
from ..workflows.submit import SubmittedWorkflow, WorkflowSubmitter
from . import queries, stats
from .actions import OperatorActions
from .deadlines import Deadlines
from .dialect_postgres import WAKE_CHANNEL
from .direct import DirectConnection
from .leases import FinishedAttempt, FinishOutcome, Leases
from .limit_overrides import LimitOverrides
from .maintenance import Maintenance
from .models import TERMINAL_STATUSES, AsyncTask, TaskEvent, Worker
from .processor import TaskInfo, TaskResult
from .queries import ALL_TYPES, LIST_PREVIEW_CHARS, TaskFilter, TaskPage
from .queries import list_task_previews as _list_task_previews
from .store import TaskStore, engine_state
from .submit import SubmitOutcome, Submitter, TaskSnapshot
from .validation import parse_time, validate_status, validate_task_id
from .waiting import Waiting, WaitingReasons

__all__ = [
    "ALL_TYPES", "WAKE_CHANNEL", "AsyncTaskService", "FinishOutcome", "FinishedAttempt", "SubmitOutcome",
    "TaskFilter", "TaskPage", "TaskSnapshot", "engine_state", "parse_time", "validate_status",
    "validate_task_id",
]


class AsyncTaskService(TaskStore):
    """Submit, read, cancel and retry tasks; claim, finish and recover them for consumers.

    Construct it with no arguments inside an application context; it uses the app's
    processor registry and the Flask-SQLAlchemy session.
    """

    # -- submit ------------------------------------------------------------------------------

    def submit_task(self, task_type: str, payload: Any, priority: int | None = None,
                    created_by: str | None = None, run_at: datetime | str | None = None,
                    **options: Any) -> AsyncTask:
        """Queue a task and return it (status PENDING). Invalid input raises, writing nothing."""
        return self.submit(task_type, payload, priority, created_by, run_at, **options).task

    def submit(self, task_type: str, payload: Any, priority: int | None = None, created_by: str | None = None,
               run_at: datetime | str | None = None, *, idempotency_key: str | None = None,
               idempotency_scope: str | None = None, notify_url: str | None = None,
               parent_id: int | None = None, commit: bool = True,
               principal: str | None = None, start_by: datetime | str | None = None,
               expires_in: float | None = None) -> SubmitOutcome:
        """Like ``submit_task`` but says whether an idempotent repeat returned an existing task.

        ``commit=False`` joins the caller's transaction: the task is inserted and flushed, and
        the caller commits it together with its own rows. ``principal`` records who submitted
        (``token:<name>``, ``user:<name>``, ``cli``).
        """
        return self.part(Submitter).submit(
            task_type, payload, priority, created_by, run_at, idempotency_key=idempotency_key,
            idempotency_scope=idempotency_scope, notify_url=notify_url, parent_id=parent_id, commit=commit,
            principal=principal, start_by=start_by, expires_in=expires_in)

    def submit_many(self, items: Iterable[dict[str, Any]], *, idempotency_scope: str | None = None,
                    commit: bool = True, principal: str | None = None) -> list[TaskSnapshot]:
        """Queue many tasks in one transaction; if any item is invalid, none is written."""
        return self.part(Submitter).submit_many(items, idempotency_scope=idempotency_scope, commit=commit,
                                                principal=principal)

    # -- workflows (docs/workflows.md) -------------------------------------------------------

    def submit_workflow(self, tasks: Any, name: str | None = None, on_failure: str = "cancel_dependents",
                        callbacks: dict[str, Any] | None = None, *, principal: str | None = None,
                        created_by: str | None = None) -> SubmittedWorkflow:
        """Queue tasks that wait for each other (``after``) in one transaction; invalid input writes nothing."""
        return self.part(WorkflowSubmitter).submit_workflow(tasks, name, on_failure, callbacks, principal=principal,
                                                            created_by=created_by)

    def cancel_workflow(self, workflow_id: Any, actor: str | None = None) -> int:
        """Cancel every task of a workflow that has not started; how many were cancelled."""
        return self.part(WorkflowActions).cancel_workflow(workflow_id, actor)

    def retry_workflow(self, workflow_id: Any, actor: str | None = None) -> int:
        """Retry a failed (or cancelled) workflow's failed and cancelled tasks; how many came back."""
        return self.part(WorkflowActions).retry_workflow(workflow_id, actor)

    def workflow_summary(self, workflow_id: int) -> dict[str, Any]:
        """A workflow's counts, failed keys and results by key (what its callbacks receive)."""
        return workflow_summary(self, workflow_id)

    # -- read --------------------------------------------------------------------------------

    def get_task(self, task_id: Any) -> AsyncTask | None:
        """The task with that id, or ``None``."""
        return queries.get_task(self.session, task_id)

    def require_task(self, task_id: Any) -> AsyncTask:
        """The task with that id; ``TaskNotFound`` otherwise."""
        return queries.require_task(self.session, task_id)

    def get_tasks_by_type(self, task_type: str, status: str | None = None, limit: int = 100,
                          before_id: int | None = None) -> list[AsyncTask]:
        """Tasks of one type (optionally one status), newest first."""
        statuses = (validate_status(status),) if status is not None else ()
        return self.list_tasks(TaskFilter(task_type=task_type, statuses=statuses), limit, before_id).items

    def list_tasks(self, filters: TaskFilter | None = None, limit: int = 50,
                   cursor: int | None = None) -> TaskPage:
        """A keyset page of tasks matching ``filters``, newest first, continuing below ``cursor``."""
        return queries.list_tasks(self.session, filters, limit, cursor)

    def list_task_previews(self, filters: TaskFilter | None = None, limit: int = 50, cursor: int | None = None,
                           preview_chars: int = LIST_PREVIEW_CHARS) -> TaskPage:
        """``list_tasks`` whose tasks carry bounded previews instead of payload, result and error."""
        return _list_task_previews(self.session, filters, limit, cursor, preview_chars)

    def events_for(self, task_id: int) -> list[TaskEvent]:
        """A task's timeline, oldest first."""
        return queries.events_for(self.session, task_id)

    def paused_task_types(self) -> list[str]:
        """Task types (or '*') whose claims are paused."""
        return queries.paused_task_types(self.session)

    def workers(self, include_stopped: bool = False) -> list[Worker]:
        """Running workers, newest first (with ``include_stopped``, every worker ever seen)."""
        return queries.workers(self.session, include_stopped)

    def task_type_overview(self, principal: str | None = None) -> list[dict[str, Any]]:
        """Every registered task type with its retry policy, pause state and counts per status
        (with ``principal``: exact counts of that principal's tasks only)."""
        overview = stats.task_type_overview(self.registry, self.session)
        if principal is not None:
            own = queries.counts_by_type(self.session, principal)
            for item in overview:
                item["counts"] = own.get(item["task_type"], {status: 0 for status in item["counts"]})
                item["counts_are_estimates"] = False
        return overview

    # -- operator transitions ----------------------------------------------------------------

    def cancel_task(self, task_id: Any, actor: str | None = None) -> AsyncTask:
        """PENDING or RETRYING -> CANCELLED at once; PROCESSING -> a cancel request."""
        return self.part(OperatorActions).cancel_task(task_id, actor)

    def cancel_waiting(self, task_ids: Sequence[int], actor: str | None, message: str | None = None) -> list[int]:
        """PENDING/RETRYING -> CANCELLED for these ids (no commit); the ids that changed."""
        return self.part(OperatorActions).cancel_waiting(task_ids, actor, message)

    def retry_task(self, task_id: Any, actor: str | None = None) -> AsyncTask:
        """FAILURE -> PENDING with the retry count back at 0. Any other status is refused."""
        return self.part(OperatorActions).retry_task(task_id, actor)

    def retry_failed(self, task_ids: Sequence[int], actor: str | None, message: str | None = None) -> list[int]:
        """FAILURE -> PENDING for these ids (no commit); the ids that changed."""
        return self.part(OperatorActions).retry_failed(task_ids, actor, message)

    def resubmit_task(self, task_id: Any, payload: Any, actor: str | None = None,
                      principal: str | None = None) -> AsyncTask:
        """Edit and retry: a new task with ``payload`` linked to a FAILURE or CANCELLED original
        (submitted by ``principal``, by default the original's)."""
        return self.part(OperatorActions).resubmit_task(task_id, payload, actor, principal)

    def pause_task_type(self, task_type: str, actor: str | None = None) -> None:
        """Stop claiming ``task_type`` ('*' pauses every type); submissions still queue."""
        self.part(OperatorActions).set_paused(task_type, True, actor)

    def resume_task_type(self, task_type: str, actor: str | None = None) -> None:
        """Claim ``task_type`` again ('*' lifts the pause of everything)."""
        self.part(OperatorActions).set_paused(task_type, False, actor)

    # -- consumer side: claim, finish, release -----------------------------------------------

    def claim_due_tasks(self, worker_id: str, limit: int, task_types: Sequence[str] | None = None,
                        direct: DirectConnection | None = None) -> list[TaskInfo]:
        """Atomically move up to ``limit`` due waiting tasks to PROCESSING for ``worker_id``."""
        return self.part(Leases).claim_due_tasks(worker_id, limit, task_types, direct)

    def paused_task_types_cached(self) -> set[str]:
        """Paused task types, re-read at most once a second."""
        return self.part(Leases).paused_task_types_cached()

    def finish_task(self, task: TaskInfo, result: TaskResult, *, worker_id: str | None = None,
                    traceback: str | None = None) -> FinishOutcome:
        """Write a worker's outcome, only if its lease (``claim_token``) still holds."""
        return self.part(Leases).finish_task(task, result, worker_id=worker_id, traceback=traceback)

    def finish_many(self, finished: Sequence[FinishedAttempt], *, worker_id: str | None = None,
                    direct: DirectConnection | None = None) -> list[FinishOutcome]:
        """Finish many attempts in one transaction (processors that wrote nothing themselves)."""
        return self.part(Leases).finish_many(finished, worker_id=worker_id, direct=direct)

    def release_tasks(self, tasks: Iterable[TaskInfo], worker_id: str | None = None,
                      reason: str = "worker stopped before the task finished", *, due_in: float = 0,
                      count_attempt: bool = True) -> list[int]:
        """PROCESSING -> PENDING for leases this worker still holds (shutdown, give-back)."""
        return self.part(Leases).release_tasks(tasks, worker_id, reason, due_in=due_in,
                                               count_attempt=count_attempt)

    def lock_holders_done(self, holders: Iterable[tuple[int, int, str]]) -> set[int]:
        """Of (task id, earlier attempt, lock value): the tasks whose Redis lock a finished attempt left."""
        return self.part(Leases).lock_holders_done(holders)

    def attempts_held_by(self, worker_id: str, older_than: float) -> list[TaskInfo]:
        """PROCESSING attempts leased to ``worker_id`` that started more than ``older_than`` s ago."""
        return self.part(Leases).attempts_held_by(worker_id, older_than)

    # -- workers and recovery ----------------------------------------------------------------

    def register_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int,
                        heartbeat_interval: float) -> None:
        """Record a starting worker as RUNNING."""
        self.part(Maintenance).register_worker(worker_id, hostname, pid, concurrency, heartbeat_interval)

    def heartbeat(self, worker_id: str, busy: int, processed: int = 0, failed: int = 0) -> bool:
        """Stamp the worker alive; False if it had been declared dead (its tasks were recovered)."""
        return self.part(Maintenance).heartbeat(worker_id, busy, processed, failed)

    def revive_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int,
                      heartbeat_interval: float) -> None:
        """A worker declared dead came back (it was paused): mark it running again."""
        self.part(Maintenance).revive_worker(worker_id, hostname, pid, concurrency, heartbeat_interval)

    def stop_worker(self, worker_id: str) -> None:
        """Record a worker's orderly stop."""
        self.part(Maintenance).stop_worker(worker_id)

    def limits_overview(self, task_type: str | None = None) -> list[dict[str, Any]]:
        """Limited (or overridden) task types: limits, override, running per key, waiting, starts in window."""
        return self.part(LimitOverrides).overview(task_type)

    def set_limit_override(self, task_type: str, body: dict[str, Any], actor: str | None = None) -> None:
        """Override a type's ``concurrency`` / ``rate`` at runtime (every worker follows within seconds)."""
        self.part(LimitOverrides).set_override(task_type, body, actor)

    def waiting_reasons(self, task_ids: Iterable[int]) -> dict[int, Waiting]:
        """Why these waiting tasks have not started (a limit at its ceiling, a pause) and their start-by."""
        return self.part(WaitingReasons).for_tasks(task_ids)

    def expire_start_deadlines(self) -> list[int]:
        """End waiting tasks past their ``start_by`` (CANCELLED, "start deadline passed"); their ids."""
        return self.part(Deadlines).expire_overdue()

    def recover_orphans(self, max_processing_time: float, heartbeat_interval: float,
                        before_commit: Callable[[list[int]], None] | None = None) -> list[int]:
        """Send PROCESSING tasks whose worker is dead, or that ran too long, back to PENDING."""
        return self.part(Maintenance).recover_orphans(max_processing_time, heartbeat_interval,
                                                      before_commit)

    def purge_finished(self, finished_before: datetime | str, statuses: Sequence[str] = TERMINAL_STATUSES,
                       batch_size: int = 1000, actor: str | None = None) -> int:
        """Delete finished tasks (and their events and notifications) older than a time, in batches."""
        return self.part(Maintenance).purge_finished(finished_before, statuses, batch_size, actor)
