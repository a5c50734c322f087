"""JSON endpoints for workflows: a thin layer over ``AsyncTaskService`` and ``workflows.queries``.

A blueprint of its own nested in the API's (``/api/workflows``), so the token check, size limit
and JSON errors apply as everywhere: 404 unknown workflow (or one out of the token's reach),
409 a cancel or retry the workflow's state refuses, 422 naming the field (``tasks[3].payload.n``).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from ..extensions import csrf
from ..tasks import AsyncTaskService
from ..workflows.errors import WorkflowNotFound
from ..workflows.models import Workflow
from ..workflows.queries import get_workflow, list_workflows, workflow_detail
from ..workflows.serialize import workflow_detail_to_dict, workflow_to_dict
from .auth import api_actor, current_token
from .parsing import check_fields, check_text, decode_cursor, encode_cursor, read_json_object

bp = Blueprint("workflows", __name__, url_prefix="/workflows")
csrf.exempt(bp)  # bearer tokens, like the rest of the API
FIELDS = ("name", "on_failure", "tasks", "callbacks", "created_by")


def _reachable(workflow_id: int) -> Workflow:
    """A workflow this token may see; any other answers 404, as if it did not exist."""
    workflow = get_workflow(AsyncTaskService().session, workflow_id)
    token = current_token()
    if not token.reaches_all and workflow.principal != token.principal:
        raise WorkflowNotFound(f"workflow {workflow_id} does not exist")
    return workflow


def _detail_response(workflow_id: int, status: int = 200) -> Response:
    response = jsonify(workflow_detail_to_dict(workflow_detail(AsyncTaskService().session, workflow_id)))
    response.status_code = status
    return response


@bp.post("")
def submit_workflow() -> Response:
    """Queue a workflow: 202 with its id and the task id of each key; 422 naming the field, nothing stored."""
    body = read_json_object()
    check_fields(body, FIELDS, ("tasks",))
    token = current_token()
    created_by = body.get("created_by")
    submitted = AsyncTaskService().submit_workflow(
        tasks=body["tasks"], name=body.get("name"), on_failure=body.get("on_failure") or "cancel_dependents",
        callbacks=body.get("callbacks"), principal=token.principal,
        created_by=created_by if isinstance(created_by, str) and created_by else token.name)
    response = jsonify(id=submitted.workflow_id, task_ids=submitted.task_ids)
    response.status_code = 202
    response.headers["Location"] = url_for("api.workflows.get_workflow_by_id", workflow_id=submitted.workflow_id)
    return response


@bp.get("")
def list_workflow_page() -> Response:
    """Workflows newest first (``status``, ``name``, ``limit`` up to 500, ``cursor``)."""
    raw_limit = request.args.get("limit", "50")
    limit = int(raw_limit) if raw_limit.isdecimal() else raw_limit
    cursor = request.args.get("cursor")
    token = current_token()
    status, name = (check_text(request.args.get(field) or "", field) or None for field in ("status", "name"))
    page = list_workflows(AsyncTaskService().session, status=status,
                          name=name, limit=limit,  # type: ignore[arg-type]
                          cursor=decode_cursor(cursor) if cursor else None,
                          principal=None if token.reaches_all else token.principal)
    return jsonify(items=[workflow_to_dict(w) for w in page.items], next_cursor=encode_cursor(page.next_cursor))


@bp.get("/<int:workflow_id>")
def get_workflow_by_id(workflow_id: int) -> Response:
    """One workflow: status, counts, its tasks with their keys and statuses, its callbacks."""
    return _detail_response(_reachable(workflow_id).id)


@bp.post("/<int:workflow_id>/cancel")
def cancel_workflow(workflow_id: int) -> Response:
    """Cancel every task that has not started (running ones finish); 409 when everything has ended."""
    AsyncTaskService().cancel_workflow(_reachable(workflow_id).id, actor=api_actor())
    return _detail_response(workflow_id)


@bp.post("/<int:workflow_id>/retry")
def retry_workflow(workflow_id: int) -> Response:
    """Retry a FAILED or CANCELLED workflow's failed and cancelled tasks; 409 otherwise."""
    AsyncTaskService().retry_workflow(_reachable(workflow_id).id, actor=api_actor())
    return _detail_response(workflow_id)
