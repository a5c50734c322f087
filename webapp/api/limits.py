"""JSON endpoints for flow control: the limits of every task type, and operators' runtime overrides.

A thin layer over ``AsyncTaskService`` (``tasks/limit_overrides.py`` does the work): reading
needs the ``read`` scope, an override the ``operate`` scope; bad input is a 422 naming the field
and changes nothing.
"""

from __future__ import annotations

from flask import Response, jsonify

from ..tasks.errors import TaskNotFound
from ..tasks.service import AsyncTaskService
from .auth import api_actor
from .blueprint import bp
from .parsing import read_json_object


def _service_for(task_type: str) -> AsyncTaskService:
    """The service, once ``task_type`` is known to be registered (a path to an unknown type is 404)."""
    service = AsyncTaskService()
    if task_type not in service.registry:
        raise TaskNotFound(f"unknown task type {task_type!r}")
    return service


@bp.get("/limits")
def list_limits() -> Response:
    """Every task type with a limit or an override: limits, override, running per key, waiting, window."""
    return jsonify(items=AsyncTaskService().limits_overview())


@bp.get("/task-types/<task_type>/limits")
def get_task_type_limits(task_type: str) -> Response:
    """One task type's limits (404 for an unknown type)."""
    [item] = _service_for(task_type).limits_overview(task_type)
    return jsonify(item)


@bp.put("/task-types/<task_type>/limits")
def set_task_type_limits(task_type: str) -> Response:
    """Override ``concurrency``, ``rate`` and ``time_limit`` at runtime (null keeps the processor's
    value); audited."""
    service = _service_for(task_type)
    service.set_limit_override(task_type, read_json_object(), actor=api_actor())
    [item] = service.limits_overview(task_type)
    return jsonify(item)
