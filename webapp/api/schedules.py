"""JSON endpoints for recurring schedules: a thin layer over ``ScheduleService``.

A blueprint of its own, nested in the API's (``/api/schedules``): the API's token check, size
limit and JSON errors apply to it as to every API route. Errors follow the task endpoints' rules
(``errors.py``): 404 unknown schedule, 409 a schedule declared in code or configuration cannot be
edited or deleted here, 422 naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from ..extensions import csrf
from ..schedules.definition import FIELDS
from ..schedules.models import Schedule
from ..schedules.service import ScheduleService
from ..schedules.slots import RunView
from ..tasks.errors import ValidationError
from .auth import api_actor
from .parsing import check_fields, check_text, read_json_object

bp = Blueprint("schedules", __name__, url_prefix="/schedules")
csrf.exempt(bp)  # bearer tokens, like the rest of the API (the parent's exemption names only itself)
REQUIRED_FIELDS = ("name", "task_type")
MAX_RUNS_PAGE = 500


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def schedule_to_dict(schedule: Schedule, service: ScheduleService) -> dict[str, Any]:
    """A schedule's JSON: its definition, state and next fire time (ISO-8601 UTC)."""
    return {
        "name": schedule.name,
        "task_type": schedule.task_type,
        "payload": schedule.payload,
        "priority": schedule.priority,
        "created_by": schedule.created_by,
        "cron": schedule.cron,
        "interval_seconds": schedule.interval_seconds,
        "timezone": schedule.timezone,
        "start_at": _iso(schedule.start_at),
        "end_at": _iso(schedule.end_at),
        "enabled": schedule.enabled,
        "overlap": schedule.overlap,
        "catch_up": schedule.catch_up,
        "description": schedule.description,
        "source": schedule.source,
        "declared_in": schedule.declared_in,
        "next_fire_at": _iso(schedule.next_fire_at),
        "reading": service.reading(schedule),
        "created_at": _iso(schedule.created_at),
        "updated_at": _iso(schedule.updated_at),
    }


def run_to_dict(view: RunView) -> dict[str, Any]:
    """One run record: slot time, kind, task id and outcome (or the reason it was skipped)."""
    run = view.run
    return {"slot_at": _iso(run.slot_at), "kind": run.kind, "task_id": run.task_id, "outcome": view.outcome,
            "skip_reason": run.skip_reason, "created_at": _iso(run.created_at), "created_by": run.created_by}


def _schedule_response(schedule: Schedule, service: ScheduleService, status: int = 200) -> Response:
    response = jsonify(schedule_to_dict(schedule, service))
    response.status_code = status
    return response


def _check_name(name: str) -> str:
    """A schedule name from the URL that can be looked up (too long or unstorable: 422)."""
    if len(name) > 100:
        raise ValidationError("name must be at most 100 characters", field="name")
    return check_text(name, "name")


@bp.get("")
def list_schedules() -> Response:
    """Every schedule, by name."""
    service = ScheduleService()
    return jsonify(items=[schedule_to_dict(schedule, service) for schedule in service.list_schedules()])


@bp.post("")
def create_schedule() -> Response:
    """Create a schedule: 201 with it and its Location; 422 naming the field when anything is invalid."""
    body = read_json_object()
    check_fields(body, FIELDS, REQUIRED_FIELDS)
    service = ScheduleService()
    schedule = service.create(body, actor=api_actor())
    response = _schedule_response(schedule, service, 201)
    response.headers["Location"] = url_for("api.schedules.get_schedule", name=schedule.name)
    return response


@bp.get("/<name>")
def get_schedule(name: str) -> Response:
    """One schedule, or 404."""
    service = ScheduleService()
    return _schedule_response(service.get(_check_name(name)), service)


@bp.patch("/<name>")
def update_schedule(name: str) -> Response:
    """Change some fields; 409 for a schedule declared in code or configuration."""
    body = read_json_object()
    check_fields(body, FIELDS, ())
    service = ScheduleService()
    return _schedule_response(service.update(_check_name(name), body, actor=api_actor()), service)


@bp.delete("/<name>")
def delete_schedule(name: str) -> Response:
    """Delete a schedule and its run records (its tasks stay): 204."""
    ScheduleService().delete(_check_name(name), actor=api_actor())
    return Response(status=204)


@bp.post("/<name>/pause")
def pause_schedule(name: str) -> Response:
    """Stop firing (missed slots are not caught up on resume)."""
    service = ScheduleService()
    return _schedule_response(service.set_enabled(_check_name(name), False, actor=api_actor()), service)


@bp.post("/<name>/resume")
def resume_schedule(name: str) -> Response:
    """Fire again from the next slot after now."""
    service = ScheduleService()
    return _schedule_response(service.set_enabled(_check_name(name), True, actor=api_actor()), service)


@bp.post("/<name>/run")
def run_schedule(name: str) -> Response:
    """Run now: 202 with the manual run record and its task's id."""
    view = ScheduleService().run_now(_check_name(name), actor=api_actor())
    response = jsonify(run_to_dict(view))
    response.status_code = 202
    if view.run.task_id is not None:
        response.headers["Location"] = url_for("api.get_task", task_id=view.run.task_id)
    return response


@bp.get("/<name>/runs")
def list_schedule_runs(name: str) -> Response:
    """The schedule's runs, newest slot first (``limit``, default 50, at most 500)."""
    raw_limit = request.args.get("limit", "50")
    if not raw_limit.isdecimal() or not 1 <= int(raw_limit) <= MAX_RUNS_PAGE:
        raise ValidationError(f"limit must be a whole number from 1 to {MAX_RUNS_PAGE}", field="limit")
    runs = ScheduleService().runs(_check_name(name), limit=int(raw_limit))
    return jsonify(items=[run_to_dict(view) for view in runs])
