"""The export endpoints' part of the OpenAPI document (``openapi.build_openapi`` merges it)."""

from __future__ import annotations

from typing import Any

from ..tasks.models import NotificationStatus, TaskStatus
from ..tasks.processor import NotificationType

JSON = "application/json"
ERRORS = {
    401: "Missing, unknown or revoked bearer token.",
    403: "The token lacks the read scope, or (audit, notifications) does not reach every task.",
    422: "Invalid parameter, named in `error.field` (`format`, `status`, `created_after`, …); nothing is exported.",
}


def _errors() -> dict[str, Any]:
    return {str(status): {"description": text, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for status, text in ERRORS.items()}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


FORMAT = _query("format", {"type": "string", "enum": ["csv", "jsonl"], "default": "csv"},
                "CSV (a header line, objects as JSON text) or JSON Lines (one object a line).")


def _export(operation_id: str, summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [FORMAT, *parameters],
        "responses": {"200": {"description": "The file, streamed newest first; the export is in the audit log.",
                              "content": {"text/csv": {"schema": {"type": "string"}},
                                          "application/x-ndjson": {"schema": {"type": "string"}}}},
                      **_errors()},
    }}


def export_paths() -> dict[str, Any]:
    """Paths of the export endpoints."""
    time = {"type": "string", "format": "date-time"}
    text = {"type": "string"}
    return {
        "/api/exports/tasks": _export("exportTasks", "Every task matching the filters (a token's reach applies)", [
            _query("task_type", text, "Only this task type."),
            _query("status", {"type": "array", "items": {"type": "string", "enum": [s.value for s in TaskStatus]}},
                   "Repeatable."),
            _query("created_by", text, "Exact creator."),
            _query("created_after", time, "ISO-8601 with a zone."),
            _query("created_before", time, "ISO-8601 with a zone."),
            _query("search", text, "Text in the error or payload, or an id."),
        ]),
        "/api/exports/audit": _export("exportAuditLog", "The audit log (token reaching every task)", [
            _query("actor", text, "Exact actor."),
            _query("action", text, "Action prefix (`task.`, `export.`)."),
        ]),
        "/api/exports/notifications": _export("exportNotifications", "Notifications (token reaching every task)", [
            _query("status", {"type": "array", "items": {"type": "string",
                                                           "enum": [s.value for s in NotificationStatus]}},
                   "Repeatable."),
            _query("type", {"type": "string", "enum": [t.value for t in NotificationType]}, "EMAIL or WEBHOOK."),
            _query("task_id", {"type": "integer"}, "One task's notifications."),
            _query("recipient", text, "Exact address or URL."),
        ]),
    }
