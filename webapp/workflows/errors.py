"""The workflows' errors: the engine's, so every front end maps them as it maps a task's (404, 409)."""

from __future__ import annotations

from ..tasks.errors import InvalidTransition, TaskNotFound


class WorkflowNotFound(TaskNotFound):
    """No workflow has that id."""


class WorkflowActionRefused(InvalidTransition):
    """The workflow's status does not allow the cancel or retry asked for."""
