"""Console page ``/limits``: every limited task type, what runs and waits, and the runtime override form.

A thin layer over ``AsyncTaskService``: ``limits_overview`` reads, ``set_limit_override`` (the
service function the API's PUT uses) validates and audits a change. The form is for operators;
a refused value comes back with what was typed and the error beside the field it names.
"""

from __future__ import annotations

from typing import Any

from flask import Response, flash, make_response, redirect, request, url_for
from flask_babel import gettext
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import NotFound

from ..accounts.models import Role
from ..tasks.errors import ValidationError
from ..tasks.limit_overrides import OVERRIDE_FIELDS
from ..tasks.service import AsyncTaskService
from .auth import protected_blueprint, requires
from .responses import render
from .sessions import actor_name

bp = protected_blueprint("limits", __name__)

KEYS_SHOWN = 10  # keys per limit on the page (busiest first); the API lists up to 50
# The form's inputs, and the override field each one fills (``rate_per_seconds`` -> ``rate.per_seconds``).
FORM_FIELDS = ("concurrency", "rate_count", "rate_per_seconds", "time_limit")
FIELD_OF_ERROR = {"concurrency": "concurrency", "rate": "rate_count", "rate.count": "rate_count",
                  "rate.per_seconds": "rate_per_seconds", "time_limit": "time_limit"}


def _number(values: dict[str, str], name: str, kind: type) -> Any:
    """A typed form value (None when blank), or a ``ValidationError`` naming the input."""
    text = values.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        message = (gettext("%(field)s must be a whole number", field=name) if kind is int
                   else gettext("%(field)s must be a number of seconds", field=name))
        raise ValidationError(message, field=name) from None


def override_from_form(form: MultiDict[str, str]) -> dict[str, Any]:
    """The form as the override's JSON: blank keeps the processor's value; rate needs its count."""
    values = {name: form.get(name, "") for name in FORM_FIELDS}
    body: dict[str, Any] = {"concurrency": _number(values, "concurrency", int)}
    count, per = _number(values, "rate_count", int), _number(values, "rate_per_seconds", float)
    if count is None and per is not None:
        raise ValidationError(gettext("rate_count is needed with rate_per_seconds"), field="rate_count")
    body["rate"] = None if count is None else {"count": count, "per_seconds": 1.0 if per is None else per}
    if "time_limit" in OVERRIDE_FIELDS:  # overridable once the engine supports it
        body["time_limit"] = _number(values, "time_limit", float)
    return body


def _rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each limit as the page shows it: busiest keys first, how full the busiest one is."""
    rows = []
    for item in items:
        running = item["running"][:KEYS_SHOWN]
        busiest = max((key["running"] for key in item["running"]), default=0)
        rate = item["rate"]
        rows.append({**item, "shown_keys": running, "busiest": busiest,
                     "concurrency_full": item["concurrency"] is not None and busiest >= item["concurrency"],
                     "rate_full": rate is not None and (item["starts_in_window"] or 0) >= rate["count"]})
    return rows


def _page(status: int = 200, form_type: str | None = None, values: dict[str, str] | None = None,
          error: ValidationError | None = None) -> Response:
    items = AsyncTaskService().limits_overview()
    return render("limits.html", {"limits-live": "partials/limits_live.html"}, status, rows=_rows(items),
                  form_type=form_type, values=values or {}, error=error,
                  error_input=FIELD_OF_ERROR.get(error.field or "", error.field) if error else None,
                  time_limit_overridable="time_limit" in OVERRIDE_FIELDS, form_fields=FORM_FIELDS)


@bp.get("/limits")
def limits() -> Response:
    """Every limit: key, in use / limit, waiting, starts in the current window, time limits; polled live."""
    return _page()


@bp.post("/limits/<task_type>")
@requires(Role.OPERATOR)
def override_limits(task_type: str) -> Response:
    """Store an operator's override of ``task_type`` (blank everywhere: back to the processor's limits)."""
    service = AsyncTaskService()
    if task_type not in service.registry:
        raise NotFound(gettext("unknown task type %(type)s", type=task_type))
    values = {name: request.form.get(name, "") for name in FORM_FIELDS}
    try:
        service.set_limit_override(task_type, override_from_form(request.form), actor=actor_name())
    except ValidationError as exc:
        return _page(422, task_type, values, exc)
    cleared = not any(value.strip() for value in values.values())
    flash(gettext("Limits of %(type)s are back to the processor's.", type=task_type) if cleared
          else gettext("Limits of %(type)s overridden; every worker follows within seconds.", type=task_type), "info")
    return make_response(redirect(url_for("limits.limits")), 303)
