"""What a workflow does when one of its tasks changes status, inside the transaction that changed it.

The engine calls ``members_changed`` from every path that moves a workflow's task into or out
of an ended status (a worker's finish, the bulk success statement's session path, recovery
giving up, an operator's cancel or retry). Tasks outside a workflow never get here: the callers
pass only rows whose ``workflow_id`` is set, which they already hold, so they pay nothing.

In one transaction with the change:

* a task that **succeeded** takes one off each child's ``pending_parents``; a child reaching 0
  goes WAITING -> PENDING (``unblock``) and consumers are woken;
* a task that **failed** (policy ``cancel_dependents``) or was **cancelled** (any policy: a
  cancelled task will never succeed) ends every WAITING task downstream CANCELLED
  (``cancel_dependent``); under ``wait`` a failure leaves them waiting for an operator's retry;
* the workflow's ended counts move, under the workflow row's lock (taken first, in id order),
  so concurrent finishers decide "the workflow has ended" exactly once;
* when the workflow ends (or, under ``wait``, stalls on a failure) its callbacks are inserted
  as tasks keyed ``@on_success`` / ``@on_failure`` / ``@on_finish``: the partial unique index on
  (workflow_id, workflow_key) makes each one exist at most once, whatever happens later.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, insert, select, update

from ..extensions import db
from ..tasks.attempt import TaskInfo
from ..tasks.errors import ValidationError
from ..tasks.models import AsyncTask, TaskStatus
from ..tasks.store import TaskStore
from ..tasks.transitions import TRANSITIONS
from ..tasks.validation import task_row
from .models import CALLBACK_KEY_PREFIX, FailurePolicy, Workflow, WorkflowEdge, WorkflowStatus

log = logging.getLogger(__name__)

SUCCESS, FAILURE = TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value
CANCELLED, WAITING, PENDING = TaskStatus.CANCELLED.value, TaskStatus.WAITING.value, TaskStatus.PENDING.value
ENDED_COUNTER = {SUCCESS: "succeeded", FAILURE: "failed", CANCELLED: "cancelled"}
# Statuses in which a task can still run by itself (no operator needed).
ACTIVE = (PENDING, TaskStatus.RETRYING.value, TaskStatus.PROCESSING.value)
# Which callbacks a workflow's new status fires (stalled: failed while tasks still wait).
CALLBACKS_FOR = {
    WorkflowStatus.SUCCEEDED.value: ("on_success", "on_finish"),
    WorkflowStatus.FAILED.value: ("on_failure", "on_finish"),
    "STALLED": ("on_failure",),
    WorkflowStatus.CANCELLED.value: ("on_finish",),
}


@dataclass(frozen=True)
class MemberChange:
    """One task of a workflow moved from ``from_status`` to ``to_status``."""

    task_id: int
    workflow_id: int
    from_status: str | None
    to_status: str


def is_member(workflow_id: int | None, workflow_key: str | None) -> bool:
    """A workflow's own task (a callback task belongs to its workflow but is not counted)."""
    return workflow_id is not None and not (workflow_key or "").startswith(CALLBACK_KEY_PREFIX)


def members_changed(store: TaskStore, changes: Iterable[MemberChange], actor: str | None = None) -> bool:
    """Count, release, cancel downstream and settle after these changes; True if work became due.

    The first statement moves the workflows' ended counts and so takes their rows' locks (in
    id order); everything after it, in this transaction, sees them alone. No commit: the
    caller's transaction holds the change that caused this.
    """
    changes = list(changes)
    if not changes:
        return False
    deltas: dict[int, Counter[str]] = defaultdict(Counter)
    for change in changes:  # a change between statuses that are not ended still settles its workflow
        delta = deltas[change.workflow_id]
        if change.from_status in ENDED_COUNTER:
            delta[ENDED_COUNTER[change.from_status]] -= 1
        if change.to_status in ENDED_COUNTER:
            delta[ENDED_COUNTER[change.to_status]] += 1
    workflows = count_ended(store, deltas)
    made_due = release_children(store, [c.task_id for c in changes if c.to_status == SUCCESS])
    stopping = [c.task_id for c in changes if c.to_status == CANCELLED or (
        c.to_status == FAILURE and workflows[c.workflow_id]["on_failure"] == FailurePolicy.CANCEL_DEPENDENTS)]
    cascaded = cancel_downstream(store, stopping, actor)
    if cascaded:
        workflows.update(count_ended(store, {wf: Counter(cancelled=n) for wf, n in cascaded.items()}))
    for workflow in workflows.values():
        made_due |= settle(store, workflow)
    return made_due


def count_ended(store: TaskStore, deltas: dict[int, Counter[str]]) -> dict[int, dict[str, Any]]:
    """Add ``deltas`` to the workflows' ended counts, in id order; their rows, locked, as they now are."""
    rows: dict[int, dict[str, Any]] = {}
    now = store.now()
    for workflow_id in sorted(deltas):
        delta = deltas[workflow_id]
        row = store.session.execute(
            update(Workflow).where(Workflow.id == workflow_id)
            .values(updated_at=now, **{name: getattr(Workflow, name) + delta[name]
                                       for name in ("succeeded", "failed", "cancelled") if delta[name]})
            .returning(*Workflow.__table__.c).execution_options(synchronize_session=False)
        ).mappings().first()
        if row is not None:
            rows[workflow_id] = dict(row)
    return rows


def lock_workflows(store: TaskStore, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The workflows' rows, locked in id order (an operator's action takes them before changing tasks)."""
    rows = store.session.execute(
        select(Workflow.__table__).where(Workflow.id.in_(sorted(ids))).order_by(Workflow.id).with_for_update()
    ).mappings().all()
    return {row["id"]: dict(row) for row in rows}


def release_children(store: TaskStore, succeeded: Sequence[int]) -> bool:
    """One off ``pending_parents`` of each WAITING child of ``succeeded``; those at 0 become PENDING."""
    if not succeeded:
        return False
    edges = select(WorkflowEdge.child_id).where(WorkflowEdge.parent_id.in_(succeeded))
    finished_parents = (select(func.count()).select_from(WorkflowEdge)
                        .where(WorkflowEdge.child_id == AsyncTask.id, WorkflowEdge.parent_id.in_(succeeded))
                        .scalar_subquery())
    counted = store.session.execute(
        update(AsyncTask)
        .where(AsyncTask.id.in_(edges), AsyncTask.status == WAITING)
        .values(pending_parents=AsyncTask.pending_parents - finished_parents)
        .returning(AsyncTask.id, AsyncTask.pending_parents)
        .execution_options(synchronize_session=False)
    ).all()
    return unblock(store, [row.id for row in counted if row.pending_parents <= 0])


def unblock(store: TaskStore, task_ids: Sequence[int]) -> bool:
    """WAITING -> PENDING (due now) for these ids, with their events; True if any changed."""
    if not task_ids:
        return False
    now = store.now()
    released = store.session.execute(
        update(AsyncTask)
        .where(AsyncTask.id.in_(task_ids), AsyncTask.status == WAITING, AsyncTask.pending_parents <= 0)
        .values(status=PENDING, next_run_at=now, updated_at=now)
        .returning(AsyncTask.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    store.write_events([store.transition_event("unblock", task_id, message="every parent succeeded")
                        for task_id in released])
    return bool(released)


def cancel_downstream(store: TaskStore, stopped: Sequence[int], actor: str | None) -> Counter[int]:
    """Every WAITING task downstream of ``stopped`` ends CANCELLED; how many, by workflow."""
    cancelled: Counter[int] = Counter()
    frontier = list(stopped)
    while frontier:
        now = store.now()
        rows = store.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(select(WorkflowEdge.child_id).where(WorkflowEdge.parent_id.in_(frontier))),
                   AsyncTask.status == WAITING)
            .values(status=CANCELLED, finished_at=now, updated_at=now,
                    error="cancelled: a task it depends on did not succeed")
            .returning(AsyncTask.id, AsyncTask.workflow_id)
            .execution_options(synchronize_session=False)
        ).all()
        store.write_events([store.transition_event(
            "cancel_dependent", row.id, actor=actor, message="a task it depends on did not succeed")
            for row in rows])
        cancelled.update(row.workflow_id for row in rows)
        frontier = [row.id for row in rows]
    return cancelled


def settle(store: TaskStore, workflow: dict[str, Any]) -> bool:
    """Decide the workflow's status from its counts, store a change, insert the callbacks it fires.

    True if a callback was inserted (work became due).
    """
    counts = {name: workflow[name] for name in ("succeeded", "failed", "cancelled")}
    status = WorkflowStatus.RUNNING.value
    if sum(counts.values()) >= workflow["task_count"]:
        status = (WorkflowStatus.SUCCEEDED.value if counts["succeeded"] == workflow["task_count"]
                  else WorkflowStatus.FAILED.value if counts["failed"] else WorkflowStatus.CANCELLED.value)
    elif counts["failed"] and not any_active(store, workflow["id"]):
        status = "STALLED"
    stored_status = WorkflowStatus.FAILED.value if status == "STALLED" else status
    if stored_status != workflow["status"]:
        finished_at = None if stored_status == WorkflowStatus.RUNNING.value else store.now()
        store.session.execute(
            update(Workflow).where(Workflow.id == workflow["id"])
            .values(status=stored_status, finished_at=finished_at)
            .execution_options(synchronize_session=False))
        workflow["status"] = stored_status
    made_due = False
    for kind in CALLBACKS_FOR.get(status, ()):
        made_due |= fire_callback(store, workflow, kind)
    return made_due


def any_active(store: TaskStore, workflow_id: int) -> bool:
    """Whether a task of the workflow can still run without an operator."""
    return store.session.execute(
        select(AsyncTask.id).where(AsyncTask.workflow_id == workflow_id, AsyncTask.status.in_(ACTIVE)).limit(1)
    ).first() is not None


def fire_callback(store: TaskStore, workflow: dict[str, Any], kind: str) -> bool:
    """Insert the ``kind`` callback's task unless the workflow has none or it exists already."""
    spec = (workflow["callbacks"] or {}).get(kind)
    key = CALLBACK_KEY_PREFIX + kind
    if spec is None or store.session.execute(
            select(AsyncTask.id).where(AsyncTask.workflow_id == workflow["id"], AsyncTask.workflow_key == key)
    ).first() is not None:
        return False
    try:
        row = task_row(store.processor_for, store.db_now, spec.get("task_type"), spec.get("payload", {}),
                       spec.get("priority"), workflow["created_by"], None, None, None, None, None,
                       workflow["principal"])
    except ValidationError as exc:  # checked at submit; only a processor removed since gets here
        log.warning("workflow %s: %s callback not created: %s", workflow["id"], kind, exc)
        return False
    row.update(workflow_id=workflow["id"], workflow_key=key, pending_parents=0)
    task_id = store.session.execute(insert(AsyncTask).returning(AsyncTask.id), row).scalar_one()
    store.write_events([store.transition_event("submit", task_id, actor=workflow["principal"],
                                               message=f"{kind} callback of workflow {workflow['id']}")])
    return True


# -- what a claimed task of a workflow receives ---------------------------------------------------


class ParentResults(Mapping[str, Any]):
    """``task.parent_results``: its parents' results by key, read on first use.

    Most processors never look, so the claim does not pay for it. The read uses a connection of
    its own, not the attempt's session: on SQLite a transaction that read first could not take
    the write lock the finish needs.
    """

    def __init__(self, task_id: int) -> None:
        self._task_id = task_id
        self._results: dict[str, Any] | None = None

    def _loaded(self) -> dict[str, Any]:
        if self._results is None:
            parent = AsyncTask.__table__.alias("parent")
            with db.engine.connect() as connection:
                rows = connection.execute(
                    select(parent.c.workflow_key, parent.c.result)
                    .join(WorkflowEdge, WorkflowEdge.parent_id == parent.c.id)
                    .where(WorkflowEdge.child_id == self._task_id)).all()
            self._results = {row.workflow_key: row.result for row in rows}
        return self._results

    def __getitem__(self, key: str) -> Any:
        return self._loaded()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return f"ParentResults(task {self._task_id})"


def with_workflow_inputs(store: TaskStore, claimed: list[TaskInfo]) -> list[TaskInfo]:
    """Claimed tasks with ``parent_results`` (read when used) and, for callbacks, the workflow's summary."""
    summaries = {task.workflow_id: workflow_summary(store, task.workflow_id) for task in claimed
                 if task.workflow_id is not None and not is_member(task.workflow_id, task.workflow_key)}
    out = []
    for task in claimed:
        if is_member(task.workflow_id, task.workflow_key):
            task = replace(task, parent_results=ParentResults(task.id))
        elif task.workflow_id in summaries:
            summary = summaries[task.workflow_id]
            task = replace(task, parent_results=summary["results"], workflow_summary=summary)
        out.append(task)
    return out


def workflow_summary(store: TaskStore, workflow_id: int) -> dict[str, Any]:
    """Counts by status, the failed keys and the results by key of a workflow's own tasks."""
    workflow = store.session.get(Workflow, workflow_id)
    rows = store.session.execute(
        select(AsyncTask.workflow_key, AsyncTask.status, AsyncTask.result)
        .where(AsyncTask.workflow_id == workflow_id)).all()
    members = [row for row in rows if is_member(workflow_id, row.workflow_key)]
    counts = Counter(row.status for row in members)
    return {
        "workflow_id": workflow_id,
        "name": workflow.name if workflow is not None else None,
        "status": workflow.status if workflow is not None else None,
        "total": len(members),
        "counts": {status.value: counts.get(status.value, 0) for status in TaskStatus},
        "failed_keys": sorted(row.workflow_key for row in members if row.status == FAILURE),
        "results": {row.workflow_key: row.result for row in members if row.status == SUCCESS},
    }


def changes_of(rows: Iterable[Any], from_status: str | None, to_status: str | None = None) -> list[MemberChange]:
    """``MemberChange``s of returned rows (``id``, ``workflow_id``, ``workflow_key``, optional ``status``)."""
    return [MemberChange(row.id, row.workflow_id, from_status, to_status or row.status)
            for row in rows if is_member(row.workflow_id, row.workflow_key)]


def transition_target(name: str) -> str:
    """The status the transition ``name`` ends in."""
    target = TRANSITIONS[name].to_status
    assert target is not None, name
    return target


def operator_changed(store: TaskStore, name: str, rows: Sequence[Any], actor: str | None) -> bool:
    """``members_changed`` for rows an operator transition ``name`` changed (``id``, ``workflow_*``)."""
    starts = TRANSITIONS[name].from_statuses
    from_status = starts[0] if len(starts) == 1 else None
    return members_changed(store, changes_of(rows, from_status, transition_target(name)), actor)


def settle_workflows(store: TaskStore, workflow_ids: Sequence[int]) -> bool:
    """Lock and settle these workflows (their counts already moved); True if a callback became due."""
    if not workflow_ids:
        return False
    made_due = False
    for workflow in lock_workflows(store, workflow_ids).values():
        made_due |= settle(store, workflow)
    return made_due
