"""Console exports: the task list, the audit log and notifications as CSV or JSON Lines.

Each route reads the same URL parameters as its list page (so an "Export" link carries the
filter on screen) plus ``format``, and streams ``webapp.exports``' file. A bad filter answers
400 naming the field; nothing is exported and nothing audited.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request, stream_with_context

from ..exports import (
    Export,
    ExportFormat,
    export_audit,
    export_notifications,
    export_tasks,
    parse_export_format,
)
from ..tasks.errors import ValidationError
from .auth import protected_blueprint
from .list_query import parse_audit_query
from .notifications import parse_notification_query
from .responses import error_response
from .sessions import actor_name
from .task_query import parse_task_query

bp = protected_blueprint("exports", __name__)


def streamed(export: Export) -> Response:
    """The export as a download, written while it is read."""
    response = Response(stream_with_context(export.chunks()), mimetype=export.format.media_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _export_response(errors: dict[str, str], start: Callable[[ExportFormat], Export]) -> Response:
    """400 naming the first bad filter or format (nothing exported or audited); else the stream."""
    if errors:
        field, problem = next(iter(errors.items()))
        return error_response(400, f"{field}: {problem}")
    try:
        export_format = parse_export_format(request.args.get("format"))
    except ValidationError as exc:
        return error_response(400, exc.message)
    return streamed(start(export_format))


@bp.get("/tasks/export")
def export_task_list() -> Response:
    """Every task matching the list's filter, as CSV or JSON Lines (``format``); audited."""
    query = parse_task_query(request.args)
    return _export_response(query.errors, lambda export_format: export_tasks(
        query.filters, export_format, actor_name()))


@bp.get("/audit/export")
def export_audit_log() -> Response:
    """The audit log (actor / action prefix filter) as CSV or JSON Lines; audited itself."""
    query = parse_audit_query(request.args)
    return _export_response(query.errors, lambda export_format: export_audit(
        query.actor, query.action, export_format, actor_name()))


@bp.get("/notifications/export")
def export_notification_list() -> Response:
    """Notifications matching the page's filter as CSV or JSON Lines; audited."""
    query = parse_notification_query(request.args)
    return _export_response(query.errors, lambda export_format: export_notifications(
        query.filters, export_format, actor_name()))
