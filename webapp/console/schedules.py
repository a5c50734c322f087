"""Console pages for recurring schedules: list, detail with history, create/edit with a live
preview, pause, resume, run now, delete and backfill.

The ``schedules`` blueprint is a console blueprint (login guard, error pages). Every change goes
through ``ScheduleService``, which validates and audits it; nothing here writes SQL. A form that
is refused comes back with what was typed and the error next to the field it names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

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
from flask_babel import gettext, ngettext
from werkzeug.datastructures import MultiDict

from ..accounts.models import Role
from ..schedules.definition import FIELDS
from ..schedules.models import CatchUpPolicy, OverlapPolicy, Schedule
from ..schedules.service import ScheduleService
from ..tasks.errors import TaskError, ValidationError
from .auth import protected_blueprint, requires
from .i18n import current_language
from .responses import is_htmx, render
from .sessions import actor_name, current_user

FORM_FIELDS = ("name", "task_type", "cron", "interval_seconds", "timezone", "payload", "priority", "overlap",
               "catch_up", "start_at", "end_at", "description", "created_by")
HISTORY_LENGTH = 50

bp = protected_blueprint("schedules", __name__)


@dataclass
class FireTime:
    """A fire time as the console shows it: in the schedule's zone and in UTC."""

    at: datetime
    zone: str

    @property
    def local(self) -> str:
        return self.at.astimezone(ZoneInfo(self.zone)).strftime("%Y-%m-%d %H:%M %Z")

    @property
    def utc(self) -> str:
        return self.at.strftime("%Y-%m-%d %H:%M UTC")


def _can_operate() -> bool:
    user = current_user()
    return user is not None and user.can(Role.OPERATOR)


def _fire(moment: datetime | None, zone: str) -> FireTime | None:
    return FireTime(moment, zone) if moment is not None else None


def _form_values(form: MultiDict[str, str]) -> dict[str, str]:
    return {name: form.get(name, "") for name in FORM_FIELDS}


def _definition_from_form(values: dict[str, str]) -> dict[str, Any]:
    """The typed form as service input; the payload's JSON is checked here (field ``payload``)."""
    raw: dict[str, Any] = {name: values[name].strip() for name in FORM_FIELDS if name != "payload"}
    text = values["payload"].strip() or "{}"
    try:
        raw["payload"] = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"payload is not valid JSON: {exc}", field="payload") from None
    raw["created_by"] = raw["created_by"] or None
    return raw


def _values_of(schedule: Schedule) -> dict[str, str]:
    values = {name: "" if getattr(schedule, name) is None else str(getattr(schedule, name))
              for name in FORM_FIELDS if name not in ("payload", "start_at", "end_at")}
    values["payload"] = json.dumps(schedule.payload, indent=2, sort_keys=True, ensure_ascii=False)
    for name in ("start_at", "end_at"):
        moment = getattr(schedule, name)
        values[name] = moment.isoformat().replace("+00:00", "Z") if moment is not None else ""
    return values


def _form_page(values: dict[str, str], *, editing: Schedule | None, error: TaskError | None = None,
               status: int = 200) -> Response:
    preview = None
    if error is None:
        preview = _preview(values)
    return render("schedules_form.html", {}, status, values=values, editing=editing, error=error,
                  preview=preview, task_types=current_app.extensions["async_task"].registry.task_types(),
                  overlaps=[p.value for p in OverlapPolicy], catch_ups=[p.value for p in CatchUpPolicy],
                  zones=sorted(available_timezones()))


def _preview(values: dict[str, str]) -> dict[str, Any]:
    try:
        raw = _definition_from_form(values)
    except ValidationError as exc:
        return {"error": exc.message, "field": exc.field}
    result = ScheduleService().preview(raw, current_language())
    zone = values.get("timezone") or "UTC"
    return {"error": result.error, "field": result.field, "reading": result.reading,
            "fires": [FireTime(moment, zone) for moment in result.fires or []]}


@bp.get("/schedules")
def schedules() -> Response:
    """Every schedule: next fire (local and UTC), last run, a strip of the last 20 runs; polled live."""
    service = ScheduleService()
    items = service.list_schedules()
    strips = service.recent_runs([schedule.id for schedule in items])
    language = current_language()
    rows = [{"schedule": schedule, "reading": service.reading(schedule, language),
             "next": _fire(schedule.next_fire_at, schedule.timezone), "runs": strips.get(schedule.id, [])}
            for schedule in items]
    return render("schedules.html", {"schedule-rows": "partials/schedule_rows.html"}, rows=rows,
                  can_operate=_can_operate())


@bp.route("/schedules/new", methods=["GET", "POST"])
@requires(Role.OPERATOR)
def new_schedule() -> Response:
    """The create form (operator); a refused form keeps what was typed and names the field."""
    if request.method in ("GET", "HEAD"):  # HEAD is a GET (issue 10 item 10)
        values = {name: "" for name in FORM_FIELDS}
        values.update(timezone="UTC", payload="{}", overlap="allow", catch_up="none")
        return _form_page(values, editing=None)
    values = _form_values(request.form)
    try:
        schedule = ScheduleService().create(_definition_from_form(values), actor=actor_name())
    except TaskError as exc:
        return _form_page(values, editing=None, error=exc, status=422)
    flash(gettext("Schedule %(name)s created.", name=schedule.name), "info")
    return make_response(redirect(url_for("schedules.schedule_detail", name=schedule.name)), 303)


@bp.post("/schedules/preview")
@requires(Role.OPERATOR)
def schedule_preview() -> Response:
    """The live preview under the form: the reading and the next five fire times, or the error."""
    return make_response(render_template("partials/schedule_preview.html", preview=_preview(_form_values(request.form))))


@bp.get("/schedules/<name>")
def schedule_detail(name: str) -> Response:
    """One schedule: its definition, next fire times, run history linked to tasks, and backfill."""
    service = ScheduleService()
    schedule = service.get(name)
    language = current_language()
    preview = service.preview({key: getattr(schedule, key) for key in FIELDS}, language)
    return render("schedules_detail.html", {"schedule-history": "partials/schedule_history.html"},
                  schedule=schedule, reading=service.reading(schedule, language),
                  next=_fire(schedule.next_fire_at, schedule.timezone),
                  upcoming=[FireTime(moment, schedule.timezone) for moment in preview.fires or []]
                  if schedule.enabled else [],
                  runs=service.runs(name, limit=HISTORY_LENGTH), can_operate=_can_operate(),
                  backfill={"start": "", "end": ""})


@bp.route("/schedules/<name>/edit", methods=["GET", "POST"])
@requires(Role.OPERATOR)
def edit_schedule(name: str) -> Response:
    """The edit form; schedules declared in code or configuration are refused, saying where."""
    service = ScheduleService()
    schedule = service.get(name)
    if request.method in ("GET", "HEAD"):  # HEAD is a GET (issue 10 item 10)
        return _form_page(_values_of(schedule), editing=schedule)
    values = _form_values(request.form)
    try:
        updated = service.update(name, _definition_from_form(values), actor=actor_name())
    except TaskError as exc:
        status = 409 if not isinstance(exc, ValidationError) else 422
        return _form_page(values, editing=service.get(name), error=exc, status=status)
    flash(gettext("Schedule %(name)s saved.", name=updated.name), "info")
    return make_response(redirect(url_for("schedules.schedule_detail", name=updated.name)), 303)


@bp.post("/schedules/<name>/<any(pause, resume):action>")
@requires(Role.OPERATOR)
def pause_or_resume_schedule(name: str, action: str) -> Response:
    """Pause (no slot fires; none is caught up later) or resume from the next slot."""
    ScheduleService().set_enabled(name, action == "resume", actor=actor_name())
    flash(gettext("Schedule %(name)s paused.", name=name) if action == "pause"
          else gettext("Schedule %(name)s resumed.", name=name), "info")
    return make_response(redirect(request.form.get("back") == "list" and url_for("schedules.schedules")
                                  or url_for("schedules.schedule_detail", name=name)), 303)


@bp.post("/schedules/<name>/run")
@requires(Role.OPERATOR)
def run_schedule_now(name: str) -> Response:
    """Run now: one task at once, recorded as a manual run."""
    view = ScheduleService().run_now(name, actor=actor_name())
    flash(gettext("Task %(id)s submitted for %(name)s.", id=view.run.task_id, name=name) if view.run.task_id
          else gettext("No task was created: %(reason)s", reason=view.run.skip_reason), "info")
    return make_response(redirect(url_for("schedules.schedule_detail", name=name)), 303)


@bp.post("/schedules/<name>/delete")
@requires(Role.OPERATOR)
def delete_schedule(name: str) -> Response:
    """Delete a schedule created at runtime (its tasks stay)."""
    ScheduleService().delete(name, actor=actor_name())
    flash(gettext("Schedule %(name)s deleted.", name=name), "info")
    return make_response(redirect(url_for("schedules.schedules")), 303)


@bp.post("/schedules/<name>/backfill")
@requires(Role.OPERATOR)
def backfill_schedule(name: str) -> Response:
    """Preview (``preview=1``, also the htmx request) or create one task per missing slot in a range."""
    service = ScheduleService()
    schedule = service.get(name)
    start, end = request.form.get("start", ""), request.form.get("end", "")
    try:
        slots = service.backfill_slots(name, start, end)
    except ValidationError as exc:
        return _backfill_answer(schedule, start, end, error=exc, status=422)
    if request.form.get("preview"):
        return _backfill_answer(schedule, start, end, slots=slots)
    runs = service.backfill(name, start, end, actor=actor_name())
    flash(ngettext("Backfill created %(num)s task.", "Backfill created %(num)s tasks.", len(runs)), "info")
    target = url_for("schedules.schedule_detail", name=name)
    if is_htmx():  # the confirmed button: htmx loads the page afresh instead of swapping a part
        response = make_response("", 200)
        response.headers["HX-Redirect"] = target
        return response
    return make_response(redirect(target), 303)


def _backfill_answer(schedule: Schedule, start: str, end: str, *, slots: list[datetime] | None = None,
                     error: ValidationError | None = None, status: int = 200) -> Response:
    fires = [FireTime(slot, schedule.timezone) for slot in slots or []]
    return make_response(render_template("partials/schedule_backfill.html", schedule=schedule,
                                         backfill={"start": start, "end": end}, slots=fires,
                                         previewed=slots is not None, error=error), status)
