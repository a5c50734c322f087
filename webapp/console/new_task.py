"""The New task form (operators): pick a type, fill a form generated from its payload dataclass
(or a JSON editor for types that take any object), priority and run-at; audited.

The form's fields come from the dataclass (name, type, default, required); what is typed is
turned into JSON values here, and the service checks the payload exactly as any submit. Every
error is shown beside its field and the form keeps what was typed; nothing is stored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import (
    Response,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext

from ..accounts.models import Role
from ..tasks.actions import OperatorActions
from ..tasks.errors import ValidationError
from ..tasks.masking import declared_sensitive_fields
from ..tasks.service import AsyncTaskService
from ..tasks.validation import INT32_MAX, INT32_MIN
from .auth import protected_blueprint, requires
from .clock import parse_clock_input
from .json_input import parse_json_text
from .list_query import whole_number
from .sessions import actor_name

bp = protected_blueprint("new_task", __name__)

# How each annotation is typed into the form; anything else is a JSON value.
INPUT_KINDS = {str: "text", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class FormField:
    """One payload field of the form: how it is typed, whether it is required, its default."""

    name: str
    kind: str  # text, integer, number, boolean, json
    type_name: str
    required: bool
    default_text: str
    sensitive: bool


def _type_name(annotation: Any) -> str:
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _plain(annotation: Any) -> Any:
    """``X | None`` is typed as ``X`` (an empty input leaves the default)."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def form_fields(payload_type: Any, sensitive: frozenset[str]) -> list[FormField]:
    """The form of a dataclass payload type (empty for a type that takes any object)."""
    if payload_type is None or not dataclasses.is_dataclass(payload_type):
        return []
    hints = typing.get_type_hints(payload_type)
    fields = []
    for spec in dataclasses.fields(payload_type):
        if not spec.init:
            continue
        annotation = _plain(hints.get(spec.name, Any))
        kind = INPUT_KINDS.get(annotation, "json")
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        default: Any = spec.default if spec.default is not dataclasses.MISSING else (
            spec.default_factory() if spec.default_factory is not dataclasses.MISSING else None)
        if default is None:
            default_text = ""
        elif kind == "json":
            default_text = json.dumps(default, ensure_ascii=False)
        elif kind == "boolean":
            default_text = "true" if default else ""
        else:
            default_text = str(default)
        fields.append(FormField(spec.name, kind, _type_name(hints.get(spec.name, Any)), required, default_text,
                                spec.name in sensitive))
    return fields


def _value(field: FormField, text: str, checked: bool) -> Any:
    """The JSON value of what was typed into ``field`` (a ValidationError naming it otherwise)."""
    name = f"payload.{field.name}"
    if field.kind == "boolean":
        return checked
    if field.kind == "text":
        return text
    if field.kind == "integer":
        return whole_number(text, name, -(2**53), 2**53)
    if field.kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValidationError(gettext("%(field)s must be a number", field=field.name), field=name) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(gettext("%(field)s is not valid JSON: %(problem)s", field=field.name,
                                      problem=exc.msg), field=name) from None


def payload_from_form(fields: list[FormField], form: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The payload typed into the form, and errors by input name (``payload.<field>``)."""
    payload: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field in fields:
        text = (form.get(f"payload.{field.name}") or "")
        if field.kind != "text":
            text = text.strip()
        if field.kind != "boolean" and text == "":
            if field.required:
                errors[f"payload.{field.name}"] = gettext("%(field)s is required", field=field.name)
            continue
        try:
            payload[field.name] = _value(field, text, form.get(f"payload.{field.name}") is not None)
        except ValidationError as exc:
            errors[f"payload.{field.name}"] = exc.message
    return payload, errors


def _run_at(text: str) -> datetime | None:
    """The run-at input (``datetime-local``, read in the zone the console shows) as an aware time."""
    if not text.strip():
        return None
    try:
        return parse_clock_input(text, "run_at")
    except ValidationError:
        raise ValidationError(gettext("run at must be a date and time"), field="run_at") from None


def _page(task_type: str | None, values: dict[str, str], errors: dict[str, str], status: int = 200) -> Response:
    registry = current_app.extensions["async_task"].registry
    processor = registry.get(task_type) if task_type else None
    payload_type = getattr(processor, "payload_type", None)
    fields = form_fields(payload_type, declared_sensitive_fields(processor))
    return make_response(render_template(
        "new_task.html", task_types=registry.task_types(), task_type=task_type if processor else None,
        payload_type=getattr(payload_type, "__name__", None), fields=fields,
        any_object=processor is not None and not fields, values=values, errors=errors), status)


@bp.get("/tasks/new")
@requires(Role.OPERATOR)
def new_task_form() -> Response:
    """The form: a type picker, then the chosen type's fields (or a JSON editor)."""
    task_type = (request.args.get("task_type") or "").strip() or None
    errors = {}
    if task_type and task_type not in current_app.extensions["async_task"].registry:
        errors["task_type"] = gettext("unknown task type %(type)s", type=task_type)
    return _page(task_type, {}, errors, 422 if errors else 200)


@bp.post("/tasks/new")
@requires(Role.OPERATOR)
def create_task() -> Response:
    """Submit the typed task (audited as task.submit); errors are shown beside their fields."""
    values = {name: value for name, value in request.form.items() if name != "csrf_token"}
    task_type = (request.form.get("task_type") or "").strip()
    processor = current_app.extensions["async_task"].registry.get(task_type)
    if processor is None:
        return _page(None, values, {"task_type": gettext("choose a task type")}, 422)
    fields = form_fields(processor.payload_type, declared_sensitive_fields(processor))
    errors: dict[str, str] = {}
    payload: Any = {}
    if fields:
        payload, errors = payload_from_form(fields, request.form)
    else:
        try:
            payload = parse_json_text(request.form.get("payload") or "{}")
        except ValidationError as exc:
            errors["payload"] = exc.message
    priority = None
    run_at = None
    try:
        priority_text = (request.form.get("priority") or "").strip()
        priority = whole_number(priority_text, "priority", INT32_MIN, INT32_MAX) if priority_text else None
    except ValidationError as exc:
        errors["priority"] = exc.message
    try:
        run_at = _run_at(request.form.get("run_at") or "")
    except ValidationError as exc:
        errors["run_at"] = exc.message
    if errors:
        return _page(task_type, values, errors, 422)
    try:
        task = AsyncTaskService().part(OperatorActions).submit_for_operator(
            task_type, payload, priority, run_at, actor_name())
    except ValidationError as exc:
        return _page(task_type, values, {exc.field or "payload": exc.message}, 422)
    flash(gettext("Task %(id)s created.", id=task.id), "info")
    return make_response(redirect(url_for("console.task_detail", task_id=task.id)), 303)
