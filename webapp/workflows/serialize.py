"""Plain-JSON views of workflows for the API and the CLI."""

from __future__ import annotations

from typing import Any

from ..tasks.serialize import iso
from .models import Workflow
from .queries import WorkflowDetail, WorkflowTask


def workflow_to_dict(workflow: Workflow) -> dict[str, Any]:
    """A workflow's state and its ended counts ("37 / 40 done" is ``ended`` / ``task_count``)."""
    return {
        "id": workflow.id,
        "name": workflow.name,
        "status": workflow.status,
        "on_failure": workflow.on_failure,
        "task_count": workflow.task_count,
        "ended": workflow.ended,
        "succeeded": workflow.succeeded,
        "failed": workflow.failed,
        "cancelled": workflow.cancelled,
        "callbacks": workflow.callbacks,
        "created_by": workflow.created_by,
        "created_at": iso(workflow.created_at),
        "updated_at": iso(workflow.updated_at),
        "finished_at": iso(workflow.finished_at),
    }


def workflow_task_to_dict(task: WorkflowTask) -> dict[str, Any]:
    """One task of a workflow: id, key, type, status, attempts and times."""
    return {"id": task.id, "key": task.key, "task_type": task.task_type, "status": task.status,
            "attempts": task.attempts, "started_at": iso(task.started_at), "finished_at": iso(task.finished_at)}


def workflow_detail_to_dict(detail: WorkflowDetail) -> dict[str, Any]:
    """A workflow with its counts by status, its tasks (with the keys they wait for) and callbacks."""
    key_of = {task.id: task.key for task in detail.tasks}
    after: dict[int, list[str]] = {task.id: [] for task in detail.tasks}
    for parent, child in detail.edges:
        after.setdefault(child, []).append(key_of.get(parent, str(parent)))
    return {
        **workflow_to_dict(detail.workflow),
        "counts": detail.counts,
        "tasks": [{**workflow_task_to_dict(task), "after": sorted(after.get(task.id, []))} for task in detail.tasks],
        "callback_tasks": {task.key.lstrip("@"): workflow_task_to_dict(task) for task in detail.callbacks},
    }
