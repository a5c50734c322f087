"""Console pages for workflows: the list with filters, a workflow's live graph, cancel and retry.

A thin layer over ``AsyncTaskService`` and ``workflows.queries``: the graph is laid out by
``workflows.graph`` and drawn as SVG by the template; the page polls its graph fragment
(``HX-Target: workflow-live``) only while the workflow can still change. A task's page shows
its workflow, parents and children through the ``workflow_relations`` template global.
"""

from __future__ import annotations

from flask import Response, flash, make_response, redirect, request, url_for
from flask_babel import ngettext

from ..accounts.models import Role
from ..tasks import AsyncTaskService
from ..tasks.errors import TaskError
from ..tasks.models import AsyncTask
from ..workflows.graph import GROUP_ABOVE, grouped, layout
from ..workflows.models import WorkflowStatus
from ..workflows.queries import TaskRelations, list_workflows, task_relations, workflow_detail
from .auth import protected_blueprint, requires
from .responses import render
from .sessions import actor_name

PAGE_SIZE = 50
bp = protected_blueprint("workflows", __name__)


@bp.app_template_global()
def workflow_relations(task: AsyncTask) -> TaskRelations:
    """A task's workflow, parents and children for its page (no query for a task outside a workflow)."""
    return task_relations(AsyncTaskService().session, task)


@bp.get("/workflows")
def workflows() -> Response:
    """Workflows newest first, filtered by status and name; the rows refresh while any runs."""
    status = request.args.get("status", "").strip() or None
    name = request.args.get("name", "").strip() or None
    error = None
    try:
        page = list_workflows(AsyncTaskService().session, status=status, name=name, limit=PAGE_SIZE)
        items = page.items
    except TaskError as exc:
        items, error = [], exc
    running = any(w.status == WorkflowStatus.RUNNING.value for w in items)
    return render("workflows.html", {"workflow-rows": "partials/workflow_rows.html"}, items=items,
                  status_filter=status or "", name=name or "", statuses=[s.value for s in WorkflowStatus],
                  running=running, error=error)


@bp.get("/workflows/<int:workflow_id>")
def workflow_page(workflow_id: int) -> Response:
    """A workflow: its graph (or the grouped view above 200 tasks), callbacks, cancel and retry."""
    detail = workflow_detail(AsyncTaskService().session, workflow_id)
    big = len(detail.tasks) > GROUP_ABOVE
    return render("workflows_detail.html", {"workflow-live": "partials/workflow_live.html"}, detail=detail,
                  workflow=detail.workflow, graph=None if big else layout(detail.tasks, detail.edges),
                  groups=grouped(detail.tasks) if big else None,
                  live=detail.workflow.status == WorkflowStatus.RUNNING.value or any(
                      t.status not in ("SUCCESS", "FAILURE", "CANCELLED") for t in detail.callbacks))


@bp.post("/workflows/<int:workflow_id>/<any(cancel, retry):action>")
@requires(Role.OPERATOR)
def workflow_action(workflow_id: int, action: str) -> Response:
    """Cancel or retry the workflow (confirmed in the page, audited by the service)."""
    service = AsyncTaskService()
    if action == "cancel":
        count = service.cancel_workflow(workflow_id, actor=actor_name())
        flash(ngettext("Workflow %(id)s cancelled: %(num)s task that had not started.",
                       "Workflow %(id)s cancelled: %(num)s tasks that had not started.", count, id=workflow_id),
              "info")
    else:
        count = service.retry_workflow(workflow_id, actor=actor_name())
        flash(ngettext("Workflow %(id)s retried: %(num)s task run again.",
                       "Workflow %(id)s retried: %(num)s tasks run again.", count, id=workflow_id), "info")
    return make_response(redirect(url_for("workflows.workflow_page", workflow_id=workflow_id), 303))
