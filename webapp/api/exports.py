"""Export endpoints: every task matching a filter, the audit log, notifications; streamed.

``GET /api/exports/tasks`` takes ``GET /api/tasks``' filters (an ``own`` token exports only its
tasks); the audit log and notifications need a token that reaches every task (403 otherwise).
``format`` is ``csv`` (default) or ``jsonl``; a bad one is a 422 naming it.
"""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, Response, request, stream_with_context

from ..exports import Export, export_audit, export_notifications, export_tasks, parse_export_format
from ..extensions import csrf
from ..notifications.queries import (
    NotificationFilter,
    validate_notification_status,
    validate_notification_type,
)
from ..tasks.validation import validate_task_id
from .auth import api_actor, current_token
from .errors import ApiError
from .parsing import parse_list_query

bp = Blueprint("exports", __name__, url_prefix="/exports")
csrf.exempt(bp)  # bearer tokens, like the rest of the API


def _streamed(export: Export) -> Response:
    response = Response(stream_with_context(export.chunks()), mimetype=export.format.media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


def _require_reach_all(what: str) -> None:
    token = current_token()
    if not token.reaches_all:
        raise ApiError(403, "forbidden", f"exporting {what} needs a token that reaches every task "
                                         f"(flask tokens update {token.name} --reach all)")


@bp.get("/tasks")
def export_task_list() -> Response:
    """Every task matching the filters (those of ``GET /api/tasks``), newest first, CSV or JSON Lines."""
    export_format = parse_export_format(request.args.get("format"))
    filters, _, _ = parse_list_query(request.args)
    token = current_token()
    if not token.reaches_all:
        filters = replace(filters, principal=token.principal)
    return _streamed(export_tasks(filters, export_format, api_actor()))


@bp.get("/audit")
def export_audit_log() -> Response:
    """The audit log, optionally of one ``actor`` and an ``action`` prefix (token reaching all tasks)."""
    _require_reach_all("the audit log")
    export_format = parse_export_format(request.args.get("format"))
    actor = (request.args.get("actor") or "").strip() or None
    action = (request.args.get("action") or "").strip() or None
    return _streamed(export_audit(actor, action, export_format, api_actor()))


@bp.get("/notifications")
def export_notification_list() -> Response:
    """Notifications filtered by ``status`` (repeatable), ``type``, ``task_id``, ``recipient``."""
    _require_reach_all("notifications")
    export_format = parse_export_format(request.args.get("format"))
    task_id = request.args.get("task_id")
    filters = NotificationFilter(
        statuses=tuple(validate_notification_status(value) for value in request.args.getlist("status")),
        type=validate_notification_type(request.args["type"]) if request.args.get("type") else None,
        task_id=validate_task_id(task_id, "task_id") if task_id else None,
        recipient=(request.args.get("recipient") or "").strip() or None)
    return _streamed(export_notifications(filters, export_format, api_actor()))
