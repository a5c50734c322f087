"""The workflow endpoints' part of the OpenAPI document (``openapi.build_openapi`` merges it)."""

from __future__ import annotations

from typing import Any

from ..tasks.models import TaskStatus
from ..workflows.models import CALLBACK_KINDS, FailurePolicy, WorkflowStatus

JSON = "application/json"
ERRORS = {
    400: "Malformed JSON.",
    401: "Missing, unknown or revoked bearer token.",
    403: "The token lacks the scope this call needs (submit, read or operate).",
    404: "No such workflow (or not one this token reaches).",
    409: "The workflow's state does not allow this change.",
    413: "Request body over the configured size limit.",
    422: "Invalid input, named in `error.field` (`workflow_id` not a positive integer, `tasks[3].payload.n`, `tasks[1].after[0]`, a cycle "
         "on `tasks` naming its keys, more tasks than ASYNC_TASK_WORKFLOW_MAX_TASKS); nothing is stored.",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(*statuses: int) -> dict[str, Any]:
    """Error replies by status; every call that needs a token may also get 403 (missing scope)."""
    if 401 in statuses and 403 not in statuses:
        statuses = (*statuses, 403)
    return {str(s): {"description": ERRORS[s], "content": {JSON: {"schema": _ref("Error")}}}
            for s in sorted(statuses)}


def _reply(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def workflow_schemas() -> dict[str, Any]:
    """Component schemas of the workflow endpoints."""
    time = {"type": ["string", "null"], "format": "date-time"}
    spec = {"type": "object", "required": ["task_type"], "additionalProperties": False, "properties": {
        "task_type": {"type": "string"}, "payload": {"type": "object"},
        "priority": {"type": ["integer", "null"]}}}
    task_in = {"type": "object", "required": ["key", "task_type"], "additionalProperties": False, "properties": {
        "key": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[^@]"},
        "task_type": {"type": "string"},
        "payload": {"type": "object", "description": "Checked by the task type's processor."},
        "priority": {"type": ["integer", "null"]},
        "after": {"type": "array", "items": {"type": "string"},
                  "description": "Keys of the tasks this one waits for (each must succeed)."},
        "notify_url": {"type": ["string", "null"]},
        "created_by": {"type": ["string", "null"]}}}
    task_out = {"type": "object", "required": ["id", "key", "task_type", "status"], "properties": {
        "id": {"type": "integer"}, "key": {"type": "string"}, "task_type": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in TaskStatus]}, "attempts": {"type": "integer"},
        "started_at": time, "finished_at": time, "after": {"type": "array", "items": {"type": "string"}}}}
    workflow = {"type": "object", "required": ["id", "status", "task_count", "ended"], "properties": {
        "id": {"type": "integer"}, "name": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": [s.value for s in WorkflowStatus]},
        "on_failure": {"type": "string", "enum": [p.value for p in FailurePolicy]},
        "task_count": {"type": "integer"}, "ended": {"type": "integer"}, "succeeded": {"type": "integer"},
        "failed": {"type": "integer"}, "cancelled": {"type": "integer"}, "callbacks": {"type": "object"},
        "created_by": {"type": ["string", "null"]}, "created_at": time, "updated_at": time, "finished_at": time}}
    return {
        "WorkflowSubmission": {"type": "object", "required": ["tasks"], "additionalProperties": False,
                               "properties": {
                                   "name": {"type": ["string", "null"], "maxLength": 200},
                                   "on_failure": {"type": "string", "enum": [p.value for p in FailurePolicy],
                                                  "default": FailurePolicy.CANCEL_DEPENDENTS.value},
                                   "tasks": {"type": "array", "minItems": 1, "items": task_in},
                                   "callbacks": {"type": "object", "additionalProperties": False,
                                                 "properties": {kind: spec for kind in CALLBACK_KINDS}},
                                   "created_by": {"type": ["string", "null"]}}},
        "WorkflowSubmitted": {"type": "object", "required": ["id", "task_ids"], "properties": {
            "id": {"type": "integer"},
            "task_ids": {"type": "object", "additionalProperties": {"type": "integer"}}}},
        "Workflow": workflow,
        "WorkflowDetail": {"allOf": [_ref("Workflow"), {"type": "object", "properties": {
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "tasks": {"type": "array", "items": task_out},
            "callback_tasks": {"type": "object", "additionalProperties": task_out}}}]},
        "WorkflowList": {"type": "object", "required": ["items"], "properties": {
            "items": {"type": "array", "items": _ref("Workflow")}, "next_cursor": {"type": ["string", "null"]}}},
    }


def workflow_paths() -> dict[str, Any]:
    """Paths of the workflow endpoints."""
    workflow_id = {"name": "workflow_id", "in": "path", "required": True,
                   "schema": {"type": "integer", "minimum": 1}}

    def action(operation: str, summary: str) -> dict[str, Any]:
        return {"post": {"operationId": operation, "summary": summary, "parameters": [workflow_id],
                         "responses": {"200": _reply("The workflow.", "WorkflowDetail"), **_errors(401, 404, 409, 422)}}}

    return {
        "/api/workflows": {
            "post": {"operationId": "submitWorkflow", "summary": "Queue tasks that wait for each other",
                     "description": "All tasks in one transaction; a task with `after` waits (WAITING) until "
                                    "every task it names succeeded. Callbacks run once with the summary.",
                     "requestBody": {"required": True, "content": {JSON: {"schema": _ref("WorkflowSubmission")}}},
                     "responses": {"202": _reply("Queued.", "WorkflowSubmitted"), **_errors(400, 401, 413, 422)}},
            "get": {"operationId": "listWorkflows", "summary": "Workflows, newest first",
                    "parameters": [
                        {"name": "status", "in": "query",
                         "schema": {"type": "string", "enum": [s.value for s in WorkflowStatus]}},
                        {"name": "name", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": _reply("A page of workflows.", "WorkflowList"), **_errors(401, 422)}},
        },
        "/api/workflows/{workflow_id}": {"get": {
            "operationId": "getWorkflow", "summary": "A workflow, its counts and its tasks", "parameters": [workflow_id],
            "responses": {"200": _reply("The workflow.", "WorkflowDetail"), **_errors(401, 404, 422)}}},
        "/api/workflows/{workflow_id}/cancel": action("cancelWorkflow", "Cancel every task that has not started"),
        "/api/workflows/{workflow_id}/retry": action("retryWorkflow", "Retry a failed workflow's failed and "
                                                                       "cancelled tasks"),
    }
