"""Errors of the schedules service; front ends map them like the engine's (404, 409, 422)."""

from __future__ import annotations

from ..tasks.errors import InvalidTransition, TaskNotFound, ValidationError


class ScheduleNotFound(TaskNotFound):
    """No schedule has that name."""

    code = "not_found"


class DuplicateScheduleName(ValidationError):
    """Another schedule already has the name."""

    code = "duplicate_name"


class StaticScheduleRefused(InvalidTransition):
    """A schedule declared in code or configuration cannot be edited or deleted at runtime."""

    code = "declared_schedule"
