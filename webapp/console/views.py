"""Console pages: overview, task list and detail, workers, task types, audit log.

Each page is one route serving both the full page and, for htmx, the fragment named by the
``HX-Target`` header (templates in ``templates/partials/``). Every change goes through
``AsyncTaskService`` or ``BulkOperations``; nothing here writes SQL.
"""

from __future__ import annotations

import json
from typing import Any

from flask import (
    Blueprint,
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
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, NotFound

from ..accounts.models import Role
from ..extensions import db
from ..tasks import stats
from ..tasks.bulk import BulkOperations, BulkPreview, Selection, parse_action
from ..tasks.errors import InvalidTransition, TaskError, TaskNotFound, ValidationError
from ..tasks.lineage import lineage_of
from ..tasks.models import AsyncTask, utcnow
from ..tasks.serialize import task_to_dict
from ..tasks.service import ALL_TYPES, AsyncTaskService, TaskPage, validate_task_id
from .auth import actor_name, current_user, is_htmx, no_store, require_login, requires, safe_next
from .presenters import attempts, payload_fields, search_match, throughput_chart, timeline
from .task_query import TaskQuery, parse_task_query

bp = Blueprint("console", __name__)
bp.before_request(require_login)
bp.after_request(no_store)

# Fields shown in the detail page's table, in this order (payload and result get their own blocks).
DETAIL_FIELDS = [
    "id", "task_type", "status", "priority", "retry_count", "max_retry_count", "retry_strategy",
    "retry_interval", "attempts", "recovery_count", "created_by", "principal", "created_at", "updated_at",
    "started_at", "finished_at", "next_run_at", "worker_id", "progress", "progress_message",
    "idempotency_key", "notify_url", "parent_id", "cancel_requested_at",
]


def hx_target() -> str | None:
    """The id of the element htmx will swap, when htmx sent the request."""
    return request.headers.get("HX-Target") if is_htmx() else None


def render(full: str, fragments: dict[str, str], status: int = 200, **context: Any) -> Response:
    """The full page, or the fragment htmx asked for by target id; always varies on those headers."""
    template = fragments.get(hx_target() or "", full)
    response = make_response(render_template(template, **context), status)
    response.headers["Vary"] = "HX-Request, HX-Target"
    return response


# -- errors ----------------------------------------------------------------------------------


def error_response(status: int, message: str) -> Response:
    """An error as a page, or for htmx as a message swapped into the page's message area."""
    if is_htmx():
        response = make_response(render_template("partials/message.html", message=message,
                                                 level="error"), status)
        response.headers["HX-Retarget"] = "#messages"
        response.headers["HX-Reswap"] = "innerHTML"
        response.headers["HX-Push-Url"] = "false"
        return response
    return make_response(render_template("error.html", status=status, message=message), status)


def handle_csrf_error(exc: CSRFError) -> Response:
    """A state-changing request without a valid CSRF token: refused, nothing changed."""
    return error_response(400, gettext("The request was refused: its security token is missing or expired. "
                                       "Reload the page and try again."))


def handle_http_error(exc: HTTPException) -> Response:
    """403, 404, 405 ... as a console page (or an htmx message)."""
    status = exc.code or 500
    messages = {403: (gettext("You are not allowed to do this: %(reason)s", reason=exc.description)
                      if exc.description else gettext("You are not allowed to do this.")),
                404: gettext("Not found.")}
    return error_response(status, messages.get(status, exc.description or exc.name))


def handle_task_error(exc: TaskError) -> Response:
    """Engine errors (bad id, refused transition) with their own message and status."""
    status = 404 if isinstance(exc, TaskNotFound) else 409 if isinstance(exc, InvalidTransition) else 400
    return error_response(status, exc.message)


for blueprint_handler in ((CSRFError, handle_csrf_error), (HTTPException, handle_http_error),
                          (TaskError, handle_task_error)):
    bp.register_error_handler(*blueprint_handler)


# -- overview --------------------------------------------------------------------------------


def redis_state() -> str:
    """``not configured``, ``connected`` or ``unreachable`` (pinged now, not cached)."""
    engine = current_app.extensions["async_task"]
    if engine.locks is None:
        return "not configured"
    return "connected" if engine.locks.ping() else "unreachable"


def claiming_state() -> dict[str, Any]:
    """Which task types workers do not claim: ``all`` (the '*' switch) and the paused types."""
    paused = AsyncTaskService().paused_task_types()
    return {"all": ALL_TYPES in paused, "types": sorted(t for t in paused if t != ALL_TYPES)}


def can_operate() -> bool:
    """Whether the current user may change tasks (operator or admin)."""
    user = current_user()
    return user is not None and user.can(Role.OPERATOR)


@bp.get("/")
def overview() -> Response:
    """Counts per status, outcomes per minute (chart), queue age, workers, Redis; polled live."""
    data = stats.overview()
    return render("overview.html", {"overview-live": "partials/overview_live.html"},
                  data=data, chart=throughput_chart(data.throughput), redis=redis_state(),
                  consumer_redis_ok=current_app.extensions["async_task"].redis_ok,
                  claiming=claiming_state(), can_operate=can_operate())


# -- task list -------------------------------------------------------------------------------


def _selected_ids() -> set[int]:
    """Checked rows sent back by the poll, so a refreshed row keeps its checkbox."""
    selected = set()
    for value in request.args.getlist("ids"):
        try:
            selected.add(validate_task_id(value, "ids"))
        except ValidationError:
            continue
    return selected


def _task_list_context(query: TaskQuery) -> dict[str, Any]:
    page = TaskPage([], None)
    if not query.errors:
        page = AsyncTaskService().list_tasks(query.filters, query.limit, query.cursor)
    live = any(not stats.is_terminal(task.status) for task in page.items)
    user = current_user()
    search = query.filters.search
    return {
        "query": query,
        "page": page,
        "matches": {task.id: search_match(search, task.error, task.payload) for task in page.items}
        if search else {},
        "live": live,
        "selected": _selected_ids(),
        "can_operate": user is not None and user.can(Role.OPERATOR),
        "task_types": current_app.extensions["async_task"].registry.task_types(),
        "list_url": url_for("console.tasks") + (f"?{query.query_string(query.cursor)}"
                                                if query.query_string(query.cursor) else ""),
    }


@bp.get("/tasks")
def tasks() -> Response:
    """Filterable, keyset-paginated task list; htmx refreshes the rows while any can change."""
    query = parse_task_query(request.args)
    context = _task_list_context(query)
    status = 400 if query.errors else 200
    response = render("tasks.html", {"task-results": "partials/task_results.html",
                                     "task-rows": "partials/task_rows.html"}, status, **context)
    if hx_target() == "task-results":
        # The canonical URL (API parameter names, no empty fields) goes into the address bar.
        response.headers["HX-Push-Url"] = "false" if query.errors else context["list_url"]
    return response


# -- task detail -----------------------------------------------------------------------------


def _load_task(task_id: int) -> AsyncTask:
    try:
        task = AsyncTaskService().get_task(task_id)
    except ValidationError:
        raise NotFound() from None
    if task is None:
        raise NotFound(f"task {task_id} does not exist")
    return task


def _detail_context(task: AsyncTask, message: str | None = None, level: str = "info") -> dict[str, Any]:
    service = AsyncTaskService()
    events = service.events_for(task.id)
    notifications = stats.notifications_for(task.id)
    fields = task_to_dict(task)
    user = current_user()
    context = {
        "task": task,
        "fields": [(name, fields.get(name)) for name in DETAIL_FIELDS],
        "timeline": timeline(events, stats.audit_for_task(task.id)),
        "attempts": attempts(events),
        "notifications": notifications,
        "notifications_live": (not stats.is_terminal(task.status)
                               or any(n.status == "PENDING" for n in notifications)),
        "live": not stats.is_terminal(task.status),
        "can_operate": user is not None and user.can(Role.OPERATOR),
        "can_cancel": task.status in ("PENDING", "RETRYING"),
        # A running task can only be asked to stop, once.
        "can_request_cancel": task.status == "PROCESSING" and task.cancel_requested_at is None,
        "can_retry": task.status == "FAILURE",
        "can_resubmit": task.status in RESUBMITTABLE,
        "lineage": lineage_of(task, events),
        "message": message,
        "level": level,
        # The live part's poll also refreshes the fields table, out of band.
        "oob": hx_target() == "task-live",
    }
    return context


@bp.get("/tasks/<int:task_id>")
def task_detail(task_id: int) -> Response:
    """Every field, payload and result, attempts, timeline, notifications; live until terminal."""
    task = _load_task(task_id)
    return render("task_detail.html", {"task-live": "partials/task_live.html",
                                       "task-notifications": "partials/task_notifications.html"},
                  **_detail_context(task))


def _transition(task_id: int, action: str) -> Response:
    """Run cancel or retry for the current user; htmx gets the refreshed live part back."""
    service = AsyncTaskService()
    db.session.rollback()
    message, level, status = "", "info", 200
    try:
        if action == "cancel":
            task = service.cancel_task(task_id, actor=actor_name())
            message = (gettext("Task %(id)s cancelled.", id=task_id) if task.status == "CANCELLED" else
                       gettext("Cancel requested for running task %(id)s; it stops when its processor "
                               "next checks.", id=task_id))
        else:
            service.retry_task(task_id, actor=actor_name())
            message = gettext("Task %(id)s sent back to PENDING.", id=task_id)
    except InvalidTransition as exc:
        message, level, status = exc.message, "error", 409
    except TaskNotFound:
        raise NotFound(f"task {task_id} does not exist") from None
    if not is_htmx():
        flash(message, level)
        return make_response(redirect(url_for("console.task_detail", task_id=task_id)), 303)
    task = _load_task(task_id)
    response = make_response(render_template("partials/task_live.html",
                                             **_detail_context(task, message, level)), status)
    response.headers["HX-Retarget"] = "#task-live"
    response.headers["HX-Reswap"] = "outerHTML"
    response.headers["HX-Trigger"] = "task-changed"
    return response


@bp.post("/tasks/<int:task_id>/cancel")
@requires(Role.OPERATOR)
def cancel_task(task_id: int) -> Response:
    """Cancel a PENDING or RETRYING task (operator)."""
    return _transition(task_id, "cancel")


@bp.post("/tasks/<int:task_id>/retry")
@requires(Role.OPERATOR)
def retry_task(task_id: int) -> Response:
    """Send a FAILURE task back to PENDING (operator)."""
    return _transition(task_id, "retry")


# -- edit and retry ----------------------------------------------------------------------------

RESUBMITTABLE = ("FAILURE", "CANCELLED")


def _edit_retry_page(task: AsyncTask, payload_text: str, error: str | None = None,
                     error_field: str | None = None, status: int = 200) -> Response:
    processor = current_app.extensions["async_task"].registry.get(task.task_type)
    payload_type = getattr(processor, "payload_type", None) if processor is not None else None
    return make_response(render_template(
        "edit_retry.html", task=task, payload_text=payload_text, error=error, error_field=error_field,
        payload_type=getattr(payload_type, "__name__", None), payload_fields=payload_fields(payload_type),
        can_resubmit=task.status in RESUBMITTABLE), status)


@bp.get("/tasks/<int:task_id>/edit-retry")
@requires(Role.OPERATOR)
def edit_retry_form(task_id: int) -> Response:
    """The payload of a FAILURE or CANCELLED task in an editor, to resubmit it as a new task."""
    task = _load_task(task_id)
    status = 200 if task.status in RESUBMITTABLE else 409
    return _edit_retry_page(task, json.dumps(task.payload, indent=2, ensure_ascii=False, sort_keys=True),
                            status=status)


@bp.post("/tasks/<int:task_id>/edit-retry")
@requires(Role.OPERATOR)
def edit_retry(task_id: int) -> Response:
    """Resubmit the edited payload as a new task linked to this one; errors keep the typed text."""
    task = _load_task(task_id)
    text = request.form.get("payload", "")
    try:
        payload = json.loads(text)
    except ValueError as exc:
        problem = getattr(exc, "msg", str(exc))
        where = (gettext(" (line %(line)s, column %(column)s)", line=exc.lineno, column=exc.colno)
                 if isinstance(exc, json.JSONDecodeError) else "")
        return _edit_retry_page(task, text, gettext("The payload is not valid JSON: %(problem)s%(where)s.",
                                                    problem=problem, where=where),
                                "payload", 400)
    db.session.rollback()
    try:
        new_task = AsyncTaskService().resubmit_task(task_id, payload, actor=actor_name())
    except InvalidTransition as exc:
        return _edit_retry_page(_load_task(task_id), text, exc.message, None, 409)
    except ValidationError as exc:
        db.session.rollback()
        return _edit_retry_page(task, text, exc.message, exc.field or "payload", 422)
    flash(gettext("Task %(new)s created from task %(old)s with the edited payload.", new=new_task.id, old=task_id),
          "info")
    return make_response(redirect(url_for("console.task_detail", task_id=new_task.id)), 303)


# -- bulk --------------------------------------------------------------------------------------


def _bulk_selection(values: Any) -> tuple[Selection, TaskQuery]:
    """The selection a bulk request names: ``scope=selected`` with ``ids``, or ``scope=matching``."""
    query = parse_task_query(values)
    scope = (values.get("scope") or "selected").strip().lower()
    if scope == "matching":
        if query.errors:
            field, problem = next(iter(query.errors.items()))
            raise ValidationError(problem, field=field)
        return Selection.matching(query.filters), query
    if scope != "selected":
        raise ValidationError(f"unknown scope {scope!r}; expected selected or matching", field="scope")
    return Selection.of_ids(values.getlist("ids")), query


@bp.get("/tasks/bulk")
@requires(Role.OPERATOR)
def bulk_preview() -> Response:
    """How many of the selected (or matching) tasks each bulk action would change; reads only."""
    selection, query = _bulk_selection(request.args)
    preview: BulkPreview = BulkOperations().preview(selection)
    return render("bulk.html", {"bulk-panel": "partials/bulk_preview.html"},
                  preview=preview, selection=selection, query=query)


@bp.post("/tasks/bulk")
@requires(Role.OPERATOR)
def bulk_apply() -> Response:
    """Apply a bulk cancel or retry; tasks whose status does not allow it are left alone."""
    action = parse_action(request.form.get("action"))
    selection, query = _bulk_selection(request.form)
    db.session.rollback()
    result = BulkOperations().apply(selection, action, actor_name())
    message = (gettext("%(count)s task(s) cancelled", count=result.changed) if action.value == "cancel"
               else gettext("%(count)s task(s) sent back to PENDING", count=result.changed))
    if result.unchanged:
        message += gettext("; %(count)s left unchanged (their status no longer allowed it)", count=result.unchanged)
    message += gettext(".")
    if not is_htmx():
        flash(message, "info")
        target = url_for("console.tasks") + (f"?{query.query_string()}" if query.query_string() else "")
        return make_response(redirect(target), 303)
    response = make_response(render_template("partials/message.html", message=message, level="info"))
    response.headers["HX-Trigger"] = "tasks-changed"
    return response


# -- workers, task types, audit --------------------------------------------------------------


@bp.get("/workers")
def workers() -> Response:
    """Consumer processes: host, pid, threads, busy, last heartbeat; polled live."""
    rows = stats.workers()
    now = utcnow()
    online = {worker.id for worker in rows if stats.is_online(worker, now)}
    return render("workers.html", {"workers-live": "partials/workers_live.html"},
                  workers=rows, online=online)


@bp.get("/task-types")
def task_types() -> Response:
    """Registered processors with their retry policy and task counts per status."""
    registry = current_app.extensions["async_task"].registry
    counts = stats.type_status_counts_at_scale()
    claiming = claiming_state()
    paused = set(claiming["types"])
    user = current_user()
    processors = []
    for processor in registry:
        task_type = processor.get_task_type()
        processors.append({
            "task_type": task_type,
            "class_name": f"{type(processor).__module__}.{type(processor).__qualname__}",
            "retry": processor.get_retry_config(),
            "payload_type": getattr(processor.payload_type, "__name__", None),
            "counts": counts.pop(task_type, None),
            # Its own switch; the '*' switch (everything paused) is shown above the table.
            "paused": task_type in paused,
        })
    return render("task_types.html", {}, processors=processors, unregistered=counts, claiming=claiming,
                  can_operate=user is not None and user.can(Role.OPERATOR))


@bp.post("/task-types/<task_type>/<any(pause, resume):action>")
@requires(Role.OPERATOR)
def pause_or_resume_task_type(task_type: str, action: str) -> Response:
    """Stop or restart claiming one task type, or every type with ``*`` (submissions keep queueing)."""
    service = AsyncTaskService()
    db.session.rollback()
    everything = task_type == ALL_TYPES
    if action == "pause":
        service.pause_task_type(task_type, actor=actor_name())
        flash(gettext("Every task type paused: workers claim nothing until claiming is resumed.") if everything
              else gettext("%(type)s paused: workers claim none of its tasks until it is resumed.", type=task_type),
              "info")
    else:
        service.resume_task_type(task_type, actor=actor_name())
        flash(gettext("Claiming resumed for every task type that is not paused on its own.") if everything
              else gettext("%(type)s resumed.", type=task_type), "info")
    target = safe_next(request.form.get("next")) if request.form.get("next") else url_for("console.task_types")
    return make_response(redirect(target), 303)


@bp.get("/audit")
def audit() -> Response:
    """The audit log, newest first, keyset-paginated; filter by actor or action prefix."""
    actor = (request.args.get("actor") or "").strip() or None
    action = (request.args.get("action") or "").strip() or None
    cursor_text = (request.args.get("cursor") or "").strip()
    cursor = validate_task_id(cursor_text, "cursor") if cursor_text else None
    page = stats.audit_page(100, cursor, actor, action)
    return render("audit.html", {}, page=page, actor=actor or "", action=action or "")
