"""Submitting a workflow: the workflow row, its tasks (WAITING when they have parents), edges, events.

All in one transaction after the whole input was checked (``validation``): a refused workflow
writes nothing. Tasks without parents are PENDING at once; the others wait, counting their
parents in ``pending_parents`` (the resolution decrements it as parents succeed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app
from sqlalchemy import insert

from ..tasks.models import AsyncTask, TaskStatus
from ..tasks.store import TaskStore
from .models import Workflow, WorkflowEdge, WorkflowStatus
from .validation import check_workflow

DEFAULT_MAX_TASKS = 10_000


@dataclass(frozen=True)
class SubmittedWorkflow:
    """The new workflow's id and the task id of each key."""

    workflow_id: int
    task_ids: dict[str, int]


class WorkflowSubmitter(TaskStore):
    """Write a checked workflow."""

    def submit_workflow(self, tasks: Any, name: Any = None, on_failure: Any = None, callbacks: Any = None,
                        *, principal: str | None = None, created_by: Any = None) -> SubmittedWorkflow:
        """Check and insert a workflow in one transaction; ``ValidationError`` naming the field otherwise."""
        max_tasks = int(current_app.config.get("ASYNC_TASK_WORKFLOW_MAX_TASKS") or DEFAULT_MAX_TASKS)
        checked = check_workflow(self.processor_for, self.db_now, tasks, name, on_failure, callbacks, max_tasks,
                                 principal, created_by)
        now = self.db_now()
        self.begin_write()
        workflow_id = self.session.execute(insert(Workflow).returning(Workflow.id), {
            "name": checked.name, "status": WorkflowStatus.RUNNING.value, "on_failure": checked.on_failure,
            "callbacks": checked.callbacks, "task_count": len(checked.rows), "succeeded": 0, "failed": 0,
            "cancelled": 0, "principal": principal,
            "created_by": created_by if isinstance(created_by, str) else None,
            "created_at": now, "updated_at": now, "finished_at": None}).scalar_one()
        rows = []
        for key, row, parents in zip(checked.keys, checked.rows, checked.parents, strict=True):
            status = TaskStatus.WAITING.value if parents else TaskStatus.PENDING.value
            rows.append({**row, "status": status, "workflow_id": workflow_id, "workflow_key": key,
                         "pending_parents": len(parents)})
        ids = list(self.session.execute(
            insert(AsyncTask).returning(AsyncTask.id, sort_by_parameter_order=True), rows).scalars())
        edges = [{"parent_id": ids[parent], "child_id": ids[child]}
                 for child, parents in enumerate(checked.parents) for parent in parents]
        if edges:
            self.session.execute(insert(WorkflowEdge), edges)
        self.write_events([
            self.transition_event("submit_waiting" if parents else "submit", task_id, actor=principal)
            for task_id, parents in zip(ids, checked.parents, strict=True)])
        self.commit_new_work()
        return SubmittedWorkflow(workflow_id, dict(zip(checked.keys, ids, strict=True)))
