"""The flow-control endpoints' part of the OpenAPI document (``openapi.build_openapi`` merges it)."""

from __future__ import annotations

from typing import Any

JSON = "application/json"
ERRORS = {
    400: "Malformed JSON.",
    401: "Missing, unknown or revoked bearer token.",
    403: "The token lacks the scope this call needs (read to read, operate to override).",
    404: "No such task type.",
    413: "Request body over the configured size limit.",
    422: "Invalid override, named in `error.field` (`concurrency`, `rate.count`, `rate.per_seconds`, "
         "`time_limit`, or an unknown field); nothing is stored.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": ERRORS[s], "content": {JSON: {"schema": _ref("Error")}}} for s in statuses}


def limit_schemas() -> dict[str, Any]:
    """Component schemas of the flow-control endpoints."""
    rate = {"type": ["object", "null"], "required": ["count", "per_seconds"], "additionalProperties": False,
            "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                           "per_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 86_400}}}
    seconds = {"type": ["number", "null"]}
    limits = {"concurrency": {"type": ["integer", "null"]}, "rate": rate, "time_limit": seconds}
    return {
        "LimitOverride": {"type": "object", "additionalProperties": False, "properties": {
            "concurrency": {"type": ["integer", "null"], "minimum": 1, "maximum": 1_000_000,
                            "description": "At most this many PROCESSING per key; null keeps the processor's."},
            "rate": {**rate, "description": "At most count starts per per_seconds; null keeps the processor's."},
            "time_limit": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 604_800,
                           "description": "Hard time limit in seconds from the next attempt on (not below the "
                                          "type's soft_time_limit); null keeps the processor's."}}},
        "TaskTypeLimits": {"type": "object", "required": ["task_type", "concurrency", "rate", "running", "waiting"],
                           "properties": {
            "task_type": {"type": "string"}, **limits,
            "concurrency_key": {"type": ["string", "null"]}, "rate_key": {"type": ["string", "null"]},
            "soft_time_limit": seconds,
            "isolation": {"type": "string", "enum": ["thread", "process"]},
            "declared": {"type": "object", "properties": {**limits, "soft_time_limit": seconds}},
            "override": {"type": ["object", "null"]},
            "running": {"type": "array", "items": {"type": "object", "properties": {
                "key": {"type": "string"}, "running": {"type": "integer", "minimum": 0}}}},
            "waiting": {"type": "integer", "minimum": 0},
            "starts_in_window": {"type": ["integer", "null"], "minimum": 0}}},
        "TaskTypeLimitsList": {"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "items": _ref("TaskTypeLimits")}}},
    }


def limit_paths() -> dict[str, Any]:
    """Paths of the flow-control endpoints."""
    task_type = {"name": "task_type", "in": "path", "required": True, "schema": {"type": "string"}}
    one = {"200": {"description": "The type's limits now.", "content": {JSON: {"schema": _ref("TaskTypeLimits")}}}}
    return {
        "/api/limits": {"get": {
            "operationId": "listLimits", "summary": "Task types with limits: in use, waiting, starts in the window",
            "responses": {"200": {"description": "Every limited or overridden type.",
                                  "content": {JSON: {"schema": _ref("TaskTypeLimitsList")}}}, **_errors(401, 403)}}},
        "/api/task-types/{task_type}/limits": {
            "get": {"operationId": "getTaskTypeLimits", "summary": "One task type's limits",
                    "parameters": [task_type], "responses": {**one, **_errors(401, 403, 404)}},
            "put": {"operationId": "setTaskTypeLimits",
                    "summary": "Override concurrency, rate and time limit at runtime (audited; every worker "
                               "follows within seconds)",
                    "parameters": [task_type],
                    "requestBody": {"required": True, "content": {JSON: {"schema": _ref("LimitOverride")}}},
                    "responses": {**one, **_errors(400, 401, 403, 404, 413, 422)}},
        },
    }
