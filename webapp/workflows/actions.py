"""An operator's changes to a whole workflow: cancel what has not started, retry what failed.

Each takes the workflow row's lock first (the lock every resolution takes), so a cancel or a
retry and a finishing task never decide the workflow's state from stale counts. Tasks change
through the engine's own transitions (``cancel``, ``retry``, ``cancel_dependent``, ``revive``,
``unblock``), with their events; both actions are audited, refusals included.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from ..tasks.actions import OperatorActions
from ..tasks.models import AsyncTask, TaskStatus
from ..tasks.store import TaskStore
from ..tasks.validation import validate_task_id
from .errors import WorkflowActionRefused, WorkflowNotFound
from .models import CALLBACK_KEY_PREFIX, WorkflowEdge, WorkflowStatus
from .resolution import MemberChange, lock_workflows, members_changed, unblock

QUEUED = (TaskStatus.PENDING.value, TaskStatus.RETRYING.value)


def own_tasks(workflow_id: int) -> Any:
    """The clause selecting a workflow's own tasks (not its callbacks)."""
    return (AsyncTask.workflow_id == workflow_id) & ~AsyncTask.workflow_key.startswith(CALLBACK_KEY_PREFIX)


class WorkflowActions(TaskStore):
    """Cancel and retry a workflow."""

    def cancel_workflow(self, workflow_id: Any, actor: str | None = None) -> int:
        """Cancel every task of the workflow that has not started; the number cancelled.

        Running tasks finish; what waits for them is cancelled with the rest. Refused (409) when
        every task has ended already.
        """
        workflow = self._locked(workflow_id, actor, "cancel")
        if workflow["succeeded"] + workflow["failed"] + workflow["cancelled"] >= workflow["task_count"]:
            self._refuse(workflow, actor, "cancel", "every task of it has ended")
        waiting = self.session.execute(
            update(AsyncTask).where(own_tasks(workflow["id"]), AsyncTask.status == TaskStatus.WAITING.value)
            .values(status=TaskStatus.CANCELLED.value, finished_at=self.now(), updated_at=self.now(),
                    error="cancelled with its workflow")
            .returning(AsyncTask.id).execution_options(synchronize_session=False)).scalars().all()
        self.write_events([self.transition_event("cancel_dependent", task_id, actor=actor,
                                                 message="workflow cancelled") for task_id in waiting])
        members_changed(self, [MemberChange(task_id, workflow["id"], None, TaskStatus.CANCELLED.value)
                               for task_id in waiting], actor)
        queued = list(self.session.scalars(
            select(AsyncTask.id).where(own_tasks(workflow["id"]), AsyncTask.status.in_(QUEUED))))
        cancelled = self.part(OperatorActions).cancel_waiting(queued, actor, "workflow cancelled") if queued else []
        self.audit(actor, "workflow.cancel", "workflow", workflow["id"],
                   detail={"cancelled": len(waiting) + len(cancelled)})
        self.commit_new_work()  # an on_finish callback may have become due
        return len(waiting) + len(cancelled)

    def retry_workflow(self, workflow_id: Any, actor: str | None = None) -> int:
        """Retry the failed tasks of a FAILED or CANCELLED workflow and bring back its cancelled ones.

        Failed tasks go FAILURE -> PENDING; cancelled ones CANCELLED -> WAITING, and those whose
        parents all succeeded on to PENDING. Returns how many tasks were brought back.
        """
        workflow = self._locked(workflow_id, actor, "retry")
        if workflow["status"] not in (WorkflowStatus.FAILED.value, WorkflowStatus.CANCELLED.value):
            self._refuse(workflow, actor, "retry", "only FAILED or CANCELLED workflows can be retried")
        failed = list(self.session.scalars(
            select(AsyncTask.id).where(own_tasks(workflow["id"]), AsyncTask.status == TaskStatus.FAILURE.value)))
        retried = self.part(OperatorActions).retry_failed(failed, actor, "workflow retried") if failed else []
        revived = self._revive(workflow["id"], actor)
        self.audit(actor, "workflow.retry", "workflow", workflow["id"],
                   detail={"retried": len(retried), "revived": len(revived)})
        self.commit_new_work()
        return len(retried) + len(revived)

    def _revive(self, workflow_id: int, actor: str | None) -> list[int]:
        """CANCELLED -> WAITING for the workflow's cancelled tasks, parents recounted; ready ones unblocked."""
        cancelled = list(self.session.scalars(
            select(AsyncTask.id).where(own_tasks(workflow_id), AsyncTask.status == TaskStatus.CANCELLED.value)))
        if not cancelled:
            return []
        edges = self.session.execute(
            select(WorkflowEdge.child_id, AsyncTask.status)
            .join(AsyncTask, AsyncTask.id == WorkflowEdge.parent_id)
            .where(WorkflowEdge.child_id.in_(cancelled))).all()
        pending = dict.fromkeys(cancelled, 0)
        for edge in edges:
            if edge.status != TaskStatus.SUCCESS.value:
                pending[edge.child_id] += 1
        now = self.now()
        for count in sorted(set(pending.values())):
            self.session.execute(
                update(AsyncTask)
                .where(AsyncTask.id.in_([t for t, n in pending.items() if n == count]),
                       AsyncTask.status == TaskStatus.CANCELLED.value)
                .values(status=TaskStatus.WAITING.value, pending_parents=count, finished_at=None, error=None,
                        updated_at=now, claim_token=None, worker_id=None, started_at=None,
                        cancel_requested_at=None)
                .execution_options(synchronize_session=False))
        self.write_events([self.transition_event("revive", task_id, actor=actor, message="workflow retried")
                           for task_id in cancelled])
        members_changed(self, [MemberChange(task_id, workflow_id, TaskStatus.CANCELLED.value,
                                            TaskStatus.WAITING.value) for task_id in cancelled], actor)
        unblock(self, [t for t, n in pending.items() if n == 0])
        return cancelled

    def _locked(self, workflow_id: Any, actor: str | None, action: str) -> dict[str, Any]:
        workflow_id = validate_task_id(workflow_id, "workflow_id")
        self.session.rollback()
        self.begin_write()
        found = lock_workflows(self, [workflow_id])
        if workflow_id not in found:
            self.session.rollback()
            raise WorkflowNotFound(f"workflow {workflow_id} does not exist")
        return found[workflow_id]

    def _refuse(self, workflow: dict[str, Any], actor: str | None, action: str, why: str) -> None:
        self.session.rollback()
        if actor is not None:
            self.begin_write()
            self.audit(actor, f"workflow.{action}", "workflow", workflow["id"], outcome="refused",
                       detail={"status": workflow["status"]})
            self.session.commit()
        raise WorkflowActionRefused(f"cannot {action} workflow {workflow['id']}: it is {workflow['status']}; {why}",
                                    current_status=workflow["status"])
