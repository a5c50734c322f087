"""The OpenAPI 3.1 document of the JSON API, built from the live processor registry.

Each registered task type gets its own submission schema, with the payload described from the
processor's ``payload_type`` dataclass when it has one, so clients and fuzzers see exactly what
``AsyncTaskService`` will accept.
"""

from __future__ import annotations

from typing import Any

from ..tasks.models import TaskStatus
from ..tasks.processor import RetryStrategy
from ..tasks.registry import ProcessorRegistry
from ..tasks.validation import INT32_MAX, INT32_MIN
from .openapi_exports import export_paths
from .openapi_limits import limit_paths, limit_schemas
from .openapi_submissions import submission_schemas
from .openapi_workflows import workflow_paths, workflow_schemas

MAX_TASK_ID = 2**63 - 1
JSON = "application/json"

DESCRIPTION = """\
Submit, inspect, cancel and retry background tasks.

**Authentication.** Every call needs `Authorization: Bearer <token>`; create a token with
`flask tokens create NAME` (it is printed once; only its SHA-256 is stored) and revoke it with
`flask tokens revoke NAME`. A missing, unknown or revoked token gets 401. This document itself
(`GET /api/openapi.json`) is public, so tools can read it without a secret; it holds none,
and names the registered task types and their payload schemas only when asked with a token.

**Errors** are always JSON: `{"error": {"code": "...", "message": "...", "field": "..."}}`
(`field` names the offending input when there is one). Malformed JSON 400, bad token 401,
unknown task or path 404, wrong method 405, refused state change 409, body over the size
limit 413, missing or invalid field, unknown task type or JSON nested deeper than 64 levels 422.

**Idempotency.** A submission carrying an `idempotency_key` already used by the same token
returns the existing task with 200 instead of creating a second one (202); the same key with
another task type or payload is refused with 409 naming the key. Batch items take keys too.

**Pagination.** `GET /api/tasks` returns tasks newest first with an opaque `next_cursor`;
pass it back as `cursor` for the next page, until it is null.
"""


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- request and response schemas ------------------------------------------------------------

def task_schema() -> dict[str, Any]:
    """The task as ``task_to_dict`` renders it: every column of the spec, times in UTC ISO-8601."""
    time = {"type": "string", "format": "date-time"}
    optional_time = _nullable(time)
    return {
        "type": "object",
        "required": ["id", "task_type", "status", "priority", "payload", "result", "retry_count",
                     "max_retry_count", "retry_strategy", "retry_interval", "created_by", "created_at",
                     "updated_at", "started_at", "finished_at", "next_run_at", "error"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "task_type": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in TaskStatus]},
            "priority": {"type": "integer"},
            "payload": {"type": ["object", "null"],
                        "description": "The payload; in list answers null when it is too large "
                                       "(see `payload_preview`)."},
            "result": {"description": "The processor's result data (any JSON), or null."},
            "retry_count": {"type": "integer", "minimum": 0},
            "max_retry_count": {"type": "integer", "minimum": 0},
            "retry_strategy": {"type": "string", "enum": [s.value for s in RetryStrategy]},
            "retry_interval": {"type": "number"},
            "created_by": {"type": ["string", "null"]},
            "created_at": time,
            "updated_at": time,
            "started_at": optional_time,
            "finished_at": optional_time,
            "next_run_at": time,
            "error": {"type": ["string", "null"]},
            "attempts": {"type": "integer", "minimum": 0},
            "recovery_count": {"type": "integer", "minimum": 0},
            "worker_id": {"type": ["string", "null"]},
            "idempotency_key": {"type": ["string", "null"]},
            "notify_url": {"type": ["string", "null"]},
            "parent_id": {"type": ["integer", "null"]},
            "progress": {"type": ["number", "null"]},
            "progress_message": {"type": ["string", "null"]},
            "cancel_requested_at": optional_time,
            "start_by": optional_time,
            "waiting_reason": {"type": ["string", "null"],
                               "description": "GET /api/tasks/{task_id} only: why a waiting task has not "
                                              "started, e.g. 'waiting: limit customer_id=42, 2 of 2 "
                                              "running' or 'waiting: rate 10 per 1 s, next start in 0.4 s'; "
                                              "null when nothing holds it back."},
        },
    }


def error_schema() -> dict[str, Any]:
    """The one error shape of the API."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable name."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "field": {"type": "string", "description": "The offending input, when there is one."},
                "current_status": {"type": "string", "description": "On 409: the task's status."},
            },
        }},
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error replies by status; every call that needs a token may also get 403 (missing scope)."""
    texts = {
        400: "Malformed JSON.",
        401: "Missing, unknown or revoked bearer token.",
        403: "The token lacks the scope this call needs (submit, read or operate).",
        404: "No such task (or not one this token reaches).",
        409: "The task's status does not allow this change.",
        413: "Request body over the configured size limit.",
        422: "Missing or invalid field (named in `error.field`), or unknown task type.",
    }
    if 401 in statuses and 403 not in statuses:
        statuses = (*statuses, 403)
    return {str(status): _error(texts[status]) for status in sorted(statuses)}


def _task_reply(description: str, location: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref("Task")}}}
    if location:
        reply["headers"] = {"Location": {"description": "URL of the task.", "required": True,
                                         "schema": {"type": "string"}}}
    return reply


def _task_id_parameter() -> dict[str, Any]:
    return {"name": "task_id", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TASK_ID}}


def _list_parameters() -> list[dict[str, Any]]:
    return [
        {"name": "task_type", "in": "query", "schema": {"type": "string"}, "description": "Only this type."},
        {"name": "status", "in": "query", "style": "form", "explode": True,
         "description": "Only these statuses (repeat the parameter for several).",
         "schema": {"type": "array", "items": {"type": "string", "enum": [s.value for s in TaskStatus]}}},
        {"name": "created_by", "in": "query", "schema": {"type": "string"}, "description": "Only this creator."},
        {"name": "created_after", "in": "query", "schema": {"type": "string", "format": "date-time"},
         "description": "Created at or after this time (ISO-8601 with a zone)."},
        {"name": "created_before", "in": "query", "schema": {"type": "string", "format": "date-time"},
         "description": "Created before this time (ISO-8601 with a zone)."},
        {"name": "search", "in": "query", "schema": {"type": "string", "maxLength": 200},
         "description": "Text found in the error or the payload, or a task id."},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
        {"name": "cursor", "in": "query", "description": "The `next_cursor` of the previous page.",
         "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}},
    ]


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def build_openapi(registry: ProcessorRegistry | None, max_body_bytes: int | None = None) -> dict[str, Any]:
    """The whole document; task types and payload schemas come from ``registry`` (``None``: the
    generic submission shape only, naming no task type)."""
    limit = f" Bodies over {max_body_bytes} bytes get 413." if max_body_bytes else ""
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Task API", "version": "1", "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/tasks": {
                "post": {
                    "operationId": "submitTask",
                    "summary": "Queue a task",
                    "description": "Validated at once: nothing is written when anything is invalid." + limit,
                    "requestBody": _json_body(_ref("TaskSubmission")),
                    "responses": {
                        "202": _task_reply("Queued (status PENDING).", location=True),
                        "200": _task_reply("Idempotent repeat: the task first created with this key.",
                                           location=True),
                        **_errors(400, 401, 413, 422),
                        "409": _error("The idempotency_key was already used for another task type or "
                                      "payload (`error.field` names it)."),
                    },
                },
                "get": {
                    "operationId": "listTasks",
                    "summary": "List tasks, newest first (keyset pages)",
                    "parameters": _list_parameters(),
                    "responses": {
                        "200": {"description": "One page.",
                                "content": {JSON: {"schema": _ref("TaskPage")}}},
                        **_errors(401, 422),
                    },
                },
            },
            "/api/tasks/batch": {
                "post": {
                    "operationId": "submitTaskBatch",
                    "summary": "Queue up to 1000 tasks at once (all or nothing)",
                    "description": "If any item is invalid, none is queued; `error.field` names it, "
                                   "e.g. `tasks[3].payload.amount`." + limit,
                    "requestBody": _json_body(_ref("TaskBatchSubmission")),
                    "responses": {
                        "202": {"description": "All queued, in the order given.",
                                "content": {JSON: {"schema": _ref("TaskBatch")}}},
                        **_errors(400, 401, 413, 422),
                        "409": _error("The idempotency_key was already used for another task type or "
                                      "payload (`error.field` names it)."),
                    },
                },
            },
            "/api/tasks/{task_id}": {
                "get": {
                    "operationId": "getTask",
                    "summary": "One task",
                    "parameters": [_task_id_parameter()],
                    "responses": {"200": _task_reply("The task."), **_errors(401, 404)},
                },
            },
            "/api/tasks/{task_id}/cancel": {
                "post": {
                    "operationId": "cancelTask",
                    "summary": "Cancel a task (a running one is asked to stop)",
                    "description": "PENDING or RETRYING: CANCELLED at once (200). PROCESSING: the "
                                   "cancel is requested (202, `cancel_requested_at` set); the processor "
                                   "stops at its next progress report or check, or finishes normally "
                                   "and the request is recorded as too late.",
                    "parameters": [_task_id_parameter()],
                    "responses": {"200": _task_reply("Cancelled."),
                                  "202": _task_reply("Running: cancel requested."),
                                  **_errors(401, 404, 409)},
                },
            },
            "/api/tasks/{task_id}/retry": {
                "post": {
                    "operationId": "retryTask",
                    "summary": "Send a FAILURE task back to PENDING (retry count reset)",
                    "parameters": [_task_id_parameter()],
                    "responses": {"200": _task_reply("Queued again."), **_errors(401, 404, 409)},
                },
            },
            "/api/tasks/{task_id}/resubmit": {
                "post": {
                    "operationId": "resubmitTask",
                    "summary": "Edit and retry: queue a new task with a new payload, linked to this one",
                    "description": "Only for FAILURE or CANCELLED tasks; the original is not changed. "
                                   "The new task's `parent_id` is this task's id.",
                    "parameters": [_task_id_parameter()],
                    "requestBody": _json_body({"type": "object", "required": ["payload"],
                                               "additionalProperties": False,
                                               "properties": {"payload": {"type": "object"}}}),
                    "responses": {"202": _task_reply("The new task (PENDING).", location=True),
                                  **_errors(400, 401, 404, 409, 413, 422)},
                },
            },
            "/api/task-types": {
                "get": {
                    "operationId": "listTaskTypes",
                    "summary": "Registered task types: retry policy, paused or not, counts per status",
                    "responses": {"200": {"description": "Every registered type.",
                                          "content": {JSON: {"schema": _ref("TaskTypeList")}}},
                                  **_errors(401)},
                },
            },
            **schedule_paths(),
            **workflow_paths(),
            **export_paths(),
            **limit_paths(),
            "/api/openapi.json": {
                "get": {
                    "operationId": "getOpenApiDocument",
                    "summary": "This document (no token needed)",
                    "security": [],
                    "responses": {"200": {"description": "The OpenAPI 3.1 document.",
                                          "content": {JSON: {"schema": {"type": "object"}}}}},
                },
            },
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "A token from `flask tokens create NAME`."}},
            "schemas": {
                "Task": task_schema(),
                "TaskPage": {"type": "object", "required": ["items", "next_cursor"], "properties": {
                    "items": {"type": "array", "items": _ref("Task")},
                    "next_cursor": {"type": ["string", "null"],
                                    "description": "Pass as `cursor` for the next page; null on the last."},
                }},
                "TaskBatchSubmission": {
                    "type": "object", "required": ["tasks"], "additionalProperties": False,
                    "properties": {"tasks": {"type": "array", "minItems": 1, "maxItems": 1000,
                                             "items": _ref("TaskSubmission")}},
                },
                "TaskBatch": {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "items": _ref("Task")}}},
                "TaskTypeList": {"type": "object", "required": ["items"], "properties": {
                    "items": {"type": "array", "items": {
                        "type": "object",
                        "required": ["task_type", "paused", "retry", "counts"],
                        "properties": {
                            "task_type": {"type": "string"},
                            "paused": {"type": "boolean"},
                            "retry": {"type": "object"},
                            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                            "counts_are_estimates": {
                                "type": "boolean",
                                "description": "true when a count above the exact-count limit is a "
                                               "sample estimate (large PostgreSQL tables)"},
                        },
                    }}}},
                "Error": error_schema(),
                **schedule_schemas(),
                **workflow_schemas(),
                **limit_schemas(),
            },
        },
    }
    schemas = document["components"]["schemas"]
    schemas.update(submission_schemas(registry, taken=set(schemas)))
    return document


# -- recurring schedules (webapp/api/schedules.py) ---------------------------------------------

SCHEDULE_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"}


def _schedule_definition(required: list[str]) -> dict[str, Any]:
    """The writable fields of a schedule (all optional in PATCH)."""
    return {
        "type": "object", "additionalProperties": False, "required": required,
        "properties": {
            "name": SCHEDULE_NAME,
            "task_type": {"type": "string", "minLength": 1, "maxLength": 100},
            "payload": {"type": "object", "description": "Checked by the task type's processor like any submit."},
            "priority": {"type": ["integer", "null"], "minimum": INT32_MIN, "maximum": INT32_MAX},
            "created_by": {"type": ["string", "null"], "maxLength": 255},
            "cron": {"type": ["string", "null"], "maxLength": 200,
                     "description": "5 fields (minute hour day month weekday) or @hourly, @daily, @weekly, "
                                    "@monthly, @yearly; give this or interval_seconds."},
            "interval_seconds": {"type": ["integer", "null"], "minimum": 1},
            "timezone": {"type": "string", "description": "IANA zone, default UTC.", "maxLength": 64},
            "start_at": {"type": ["string", "null"], "format": "date-time"},
            "end_at": {"type": ["string", "null"], "format": "date-time"},
            "enabled": {"type": "boolean"},
            "overlap": {"type": "string", "enum": ["allow", "skip", "cancel_previous"]},
            "catch_up": {"type": "string", "enum": ["none", "latest", "all"]},
            "description": {"type": "string", "maxLength": 2000},
        },
    }


def schedule_schemas() -> dict[str, Any]:
    """Component schemas of the schedule endpoints."""
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    schedule = {"type": "object", "required": ["name", "task_type", "enabled", "next_fire_at"], "properties": {
        **_schedule_definition([])["properties"],
        "source": {"type": "string", "enum": ["dynamic", "processor", "config"]},
        "declared_in": {"type": ["string", "null"]},
        "next_fire_at": nullable_time,
        "reading": {"type": "string", "description": "The expression in plain English."},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    }}
    run = {"type": "object", "required": ["slot_at", "kind", "outcome"], "properties": {
        "slot_at": {"type": "string", "format": "date-time"},
        "kind": {"type": "string", "enum": ["scheduled", "catch_up", "manual", "backfill"]},
        "task_id": {"type": ["integer", "null"]},
        "outcome": {"type": "string", "description": "The task's status, SKIPPED, or PURGED."},
        "skip_reason": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "created_by": {"type": ["string", "null"]},
    }}
    return {
        "Schedule": schedule,
        "ScheduleCreate": _schedule_definition(["name", "task_type"]),
        "ScheduleUpdate": _schedule_definition([]),
        "ScheduleList": {"type": "object", "required": ["items"],
                         "properties": {"items": {"type": "array", "items": _ref("Schedule")}}},
        "ScheduleRun": run,
        "ScheduleRunList": {"type": "object", "required": ["items"],
                            "properties": {"items": {"type": "array", "items": _ref("ScheduleRun")}}},
    }


def schedule_paths() -> dict[str, Any]:
    """Paths of the schedule endpoints."""
    name = {"name": "name", "in": "path", "required": True, "schema": SCHEDULE_NAME}
    texts = {404: "No such schedule.", 409: "Declared in code or configuration: not editable here."}

    def errors(*statuses: int) -> dict[str, Any]:
        found = _errors(*[status for status in statuses if status not in texts])
        found.update({str(status): _error(texts[status]) for status in statuses if status in texts})
        return found

    def reply(description: str, schema: str) -> dict[str, Any]:
        return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}

    def action(operation: str, summary: str) -> dict[str, Any]:
        return {"post": {"operationId": operation, "summary": summary, "parameters": [name],
                         "responses": {"200": reply("The schedule.", "Schedule"), **errors(401, 404, 422)}}}

    return {
        "/api/schedules": {
            "get": {"operationId": "listSchedules", "summary": "Every recurring schedule",
                    "responses": {"200": reply("All schedules.", "ScheduleList"), **errors(401)}},
            "post": {"operationId": "createSchedule", "summary": "Create a recurring schedule",
                     "requestBody": _json_body(_ref("ScheduleCreate")),
                     "responses": {"201": reply("Created.", "Schedule"), **errors(400, 401, 413, 422)}},
        },
        "/api/schedules/{name}": {
            "get": {"operationId": "getSchedule", "summary": "One schedule", "parameters": [name],
                    "responses": {"200": reply("The schedule.", "Schedule"), **errors(401, 404, 422)}},
            "patch": {"operationId": "updateSchedule", "summary": "Change fields of a schedule",
                      "description": "The next slots follow the new definition. Giving `cron` clears "
                                     "`interval_seconds` and the other way round.",
                      "parameters": [name], "requestBody": _json_body(_ref("ScheduleUpdate")),
                      "responses": {"200": reply("The schedule.", "Schedule"),
                                    **errors(400, 401, 404, 409, 413, 422)}},
            "delete": {"operationId": "deleteSchedule", "summary": "Delete a schedule (its tasks stay)",
                       "parameters": [name],
                       "responses": {"204": {"description": "Deleted."}, **errors(401, 404, 409, 422)}},
        },
        "/api/schedules/{name}/pause": action("pauseSchedule", "Pause: no slot fires until resumed"),
        "/api/schedules/{name}/resume": action("resumeSchedule", "Resume from the next slot after now"),
        "/api/schedules/{name}/run": {"post": {
            "operationId": "runSchedule", "summary": "Run now: one task at once, recorded as a manual run",
            "parameters": [name],
            "responses": {"202": reply("The run and its task.", "ScheduleRun"), **errors(401, 404, 422)}}},
        "/api/schedules/{name}/runs": {"get": {
            "operationId": "listScheduleRuns", "summary": "A schedule's runs, newest slot first",
            "parameters": [name, {"name": "limit", "in": "query",
                                  "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}],
            "responses": {"200": reply("Runs.", "ScheduleRunList"), **errors(401, 404, 422)}}},
    }
