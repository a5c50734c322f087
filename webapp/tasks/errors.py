"""Errors the engine raises. Front ends map them to their own form (HTTP status, exit code)."""

from __future__ import annotations


class TaskError(Exception):
    """Base class of every engine error; ``code`` is a stable machine-readable name."""

    code = "task_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(TaskError):
    """An argument is missing, of the wrong type or out of range; nothing was written."""

    code = "invalid_argument"


class UnknownTaskType(ValidationError):
    """No processor is registered for the task type."""

    code = "unknown_task_type"


class InvalidPayload(ValidationError):
    """The payload is not a JSON object or does not fit the processor's payload type."""

    code = "invalid_payload"


class TaskNotFound(TaskError):
    """No task has that id."""

    code = "not_found"


class InvalidTransition(TaskError):
    """The task's current status does not allow the requested change."""

    code = "invalid_transition"

    def __init__(self, message: str, *, current_status: str | None = None) -> None:
        super().__init__(message)
        self.current_status = current_status


class IdempotencyConflict(TaskError):
    """An idempotency key was reused for a different task type or payload; nothing was written."""

    code = "idempotency_conflict"


class RegistryError(TaskError):
    """Processors could not be registered (duplicate task type, bad module): a start-up error."""

    code = "registry_error"


class TaskCancelled(Exception):
    """Raised inside a running task when an operator asked to cancel it; ends it CANCELLED.

    ``report_progress`` raises it once a cancel has been requested; a processor may also raise
    it itself after checking ``is_cancel_requested()``.
    """


def json_shown(value: object) -> str:
    """A value as an error message names it to a JSON client: ``true``, ``null``, ``an array``,
    ``an object``, ``"text"``, ``12``, never Python's ``True`` or ``list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:60] + "…"
        return '"' + shown.replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a value of another kind"


def json_kind(value: object) -> str:
    """Only the JSON kind of a value (``a string``, ``a boolean``, …): for payload fields, whose
    values may be secrets and so never appear in a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a value of another kind"
