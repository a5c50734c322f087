"""JSON endpoints for applications: a thin layer over ``AsyncTaskService``."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from flask import Response, current_app, jsonify, request, url_for

from ..accounts.tokens import recipient_allowed
from ..tasks.errors import TaskNotFound, ValidationError
from ..tasks.models import AsyncTask
from ..tasks.queries import LIST_ERROR_CHARS, LIST_PREVIEW_CHARS
from ..tasks.serialize import task_preview_to_dict, task_to_dict
from ..tasks.service import AsyncTaskService
from .auth import api_actor, current_token, optional_token
from .blueprint import bp
from .openapi import build_openapi
from .parsing import check_fields, encode_cursor, parse_list_query, read_json_object

MAX_TASK_ID = 2**63 - 1
MAX_BATCH_SIZE = 1000
# Most JSON one list answer carries (each item is bounded too: previews, not whole values).
LIST_BYTES_BUDGET = 1024 * 1024
SUBMIT_FIELDS = ("task_type", "payload", "priority", "created_by", "run_at", "idempotency_key",
                 "notify_url", "start_by", "expires_in")
REQUIRED_FIELDS = ("task_type", "payload")


def _task_response(task: AsyncTask, status: int) -> Response:
    response = jsonify(task_to_dict(task))
    response.status_code = status
    return response


def _existing_task_id(task_id: int) -> int:
    """Ids past the database's range cannot exist: 404, like any other missing task."""
    if not 1 <= task_id <= MAX_TASK_ID:
        raise TaskNotFound(f"task {task_id} does not exist")
    return task_id


def _creator(value: Any, field: str = "created_by") -> Any:
    """``created_by`` as given, or the token's name when the caller left it out.

    A token restricted to some recipients may only name an allowed address (its tasks mail
    their creator): anything else containing '@' is refused with 422 naming the field.
    """
    token = current_token()
    creator = token.name if value is None or value == "" else value
    if isinstance(creator, str) and "@" in creator and not recipient_allowed(token.allowed_recipients, creator):
        raise ValidationError(f"{field} {creator!r} is not a recipient token {token.name!r} may notify "
                              f"(allowed: {', '.join(token.allowed_recipients or ())})", field=field)
    return creator


def _checked_notify_url(value: Any, field: str = "notify_url") -> Any:
    """A webhook URL whose host the token's recipient list allows (any URL when unrestricted)."""
    token = current_token()
    if isinstance(value, str) and value and token.allowed_recipients is not None:
        host = urlsplit(value).hostname or ""
        if not recipient_allowed(token.allowed_recipients, host):
            raise ValidationError(f"{field} host {host!r} is not a recipient token {token.name!r} may "
                                  f"notify (allowed: {', '.join(token.allowed_recipients)})", field=field)
    return value


def _reachable(task_id: int) -> int:
    """The id of a task this token may see; any other task answers 404, as if it did not exist."""
    task_id = _existing_task_id(task_id)
    token = current_token()
    if not token.reaches_all:
        task = AsyncTaskService().get_task(task_id)
        if task is None or task.principal != token.principal:
            raise TaskNotFound(f"task {task_id} does not exist")
    return task_id


@bp.post("/tasks")
def submit_task() -> Response:
    """Queue a task: 202 with the task and its Location; an idempotent repeat answers 200."""
    body = read_json_object()
    check_fields(body, SUBMIT_FIELDS, REQUIRED_FIELDS)
    outcome = AsyncTaskService().submit(
        body["task_type"], body["payload"], body.get("priority"), _creator(body.get("created_by")),
        body.get("run_at"), idempotency_key=body.get("idempotency_key"),
        idempotency_scope=current_token().name, notify_url=_checked_notify_url(body.get("notify_url")),
        principal=current_token().principal, start_by=body.get("start_by"), expires_in=body.get("expires_in"),
    )
    response = _task_response(outcome.task, 202 if outcome.created else 200)
    response.headers["Location"] = url_for("api.get_task", task_id=outcome.task.id)
    return response


@bp.post("/tasks/batch")
def submit_task_batch() -> Response:
    """Queue up to 1000 tasks at once; if any item is invalid, none is queued (422 naming it)."""
    body = read_json_object()
    check_fields(body, ("tasks",), ("tasks",))
    items = body["tasks"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_SIZE:
        raise ValidationError(f"tasks must be an array of 1 to {MAX_BATCH_SIZE} task objects", field="tasks")
    prepared = [
        {**item, "created_by": _creator(item.get("created_by"), f"tasks[{index}].created_by"),
         "notify_url": _checked_notify_url(item.get("notify_url"), f"tasks[{index}].notify_url")}
        if isinstance(item, dict) else item
        for index, item in enumerate(items)
    ]
    tasks = AsyncTaskService().submit_many(prepared, idempotency_scope=current_token().name,
                                           principal=current_token().principal)
    response = jsonify(items=[task_to_dict(task) for task in tasks])
    response.status_code = 202
    return response


@bp.get("/tasks")
def list_tasks() -> Response:
    """Tasks matching the filters, newest first, one keyset page at a time; payload, result and
    error as bounded previews (whole values: ``GET /api/tasks/<id>``), the page at most
    ``LIST_BYTES_BUDGET`` of JSON (a cut page continues at its ``next_cursor``)."""
    filters, limit, cursor = parse_list_query(request.args)
    token = current_token()
    if not token.reaches_all:  # only the tasks this token submitted (indexed: principal, id)
        filters = replace(filters, principal=token.principal)
    page = AsyncTaskService().list_task_previews(filters, limit, cursor, LIST_PREVIEW_CHARS)
    items: list[dict[str, Any]] = []
    size, next_cursor = 0, page.next_cursor
    for task in page.items:
        item = task_preview_to_dict(task, LIST_PREVIEW_CHARS, LIST_ERROR_CHARS)
        size += len(json.dumps(item, ensure_ascii=False))
        if items and size > LIST_BYTES_BUDGET:
            next_cursor = items[-1]["id"]
            break
        items.append(item)
    return jsonify(items=items, next_cursor=encode_cursor(next_cursor))


@bp.get("/tasks/<int:task_id>")
def get_task(task_id: int) -> Response:
    """One task: 200 with its JSON, or 404."""
    service = AsyncTaskService()
    task = service.require_task(_reachable(task_id))
    # Why a waiting task has not started (a limit at its ceiling, a pause): a few queries, one task.
    waiting = service.waiting_reasons([task.id]).get(task.id)
    return jsonify({**task_to_dict(task), "waiting_reason": waiting.describe() if waiting else None})


@bp.post("/tasks/<int:task_id>/cancel")
def cancel_task(task_id: int) -> Response:
    """Cancel a task: 200 when PENDING/RETRYING (now CANCELLED), 202 when PROCESSING (requested)."""
    task = AsyncTaskService().cancel_task(_reachable(task_id), actor=api_actor())
    return _task_response(task, 202 if task.status == "PROCESSING" else 200)


@bp.post("/tasks/<int:task_id>/retry")
def retry_task(task_id: int) -> Response:
    """Send a FAILURE task back to PENDING: 200, 404, or 409 for any other status."""
    task = AsyncTaskService().retry_task(_reachable(task_id), actor=api_actor())
    return _task_response(task, 200)


@bp.post("/tasks/<int:task_id>/resubmit")
def resubmit_task(task_id: int) -> Response:
    """Edit and retry: a new task with the given payload, linked to a FAILURE or CANCELLED one."""
    body = read_json_object()
    check_fields(body, ("payload",), ("payload",))
    task = AsyncTaskService().resubmit_task(_reachable(task_id), body["payload"], actor=api_actor(),
                                            principal=current_token().principal)
    response = _task_response(task, 202)
    response.headers["Location"] = url_for("api.get_task", task_id=task.id)
    return response


@bp.get("/task-types")
def list_task_types() -> Response:
    """Registered task types with their retry policy, pause state and counts per status (a token
    reaching its own tasks only counts those: other clients' volumes are not its business)."""
    token = current_token()
    return jsonify(items=AsyncTaskService().task_type_overview(None if token.reaches_all else token.principal))


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 description of this API: generic shapes for anyone, every task type's
    schema for a caller with a valid token (the registered types are not public knowledge)."""
    registry = current_app.extensions["async_task"].registry if optional_token() is not None else None
    return jsonify(build_openapi(registry, max_body_bytes=current_app.config.get("MAX_CONTENT_LENGTH")))
