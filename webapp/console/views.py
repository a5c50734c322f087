"""Console task pages: overview, task list and detail, cancel / retry, edit and retry, bulk.

Each page is one route serving both the full page and, for htmx, the fragment named by the
``HX-Target`` header (``responses.render``). Every change goes through ``AsyncTaskService`` or
``BulkOperations``, which own their transactions; nothing here writes SQL or touches the
session. Which buttons a task shows is the transition table's answer (``transitions.may``).
"""

from __future__ import annotations

import dataclasses
import json
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
from flask_babel import gettext, ngettext
from werkzeug.exceptions import NotFound

from ..accounts.models import Role
from ..accounts.users import existing_usernames
from ..tasks import stats
from ..tasks.bulk import BulkOperations, BulkPreview, Selection, parse_action
from ..tasks.errors import InvalidTransition, TaskNotFound, ValidationError
from ..tasks.lineage import lineage_of
from ..tasks.masking import (
    mask_json_text,
    mask_payload,
    scrub_text,
    secret_values,
    sensitive_fields_for,
)
from ..tasks.models import WAITING_STATUSES, AsyncTask, utcnow
from ..tasks.queries import ALL_TYPES, TaskPage
from ..tasks.serialize import task_to_dict
from ..tasks.service import AsyncTaskService
from ..tasks.stats import AuditPage
from ..tasks.transitions import may
from ..tasks.validation import validate_task_id
from .auth import protected_blueprint, requires, safe_next
from .clock import clock_time
from .formatting import mask_credentials
from .json_input import parse_json_text
from .list_query import parse_audit_query
from .presenters import (
    attempts,
    audit_rows,
    login_names,
    payload_fields,
    search_match,
    throughput_chart,
    timeline,
)
from .responses import hx_target, is_htmx, render
from .sessions import actor_name
from .task_query import TaskQuery, parse_task_query

bp = protected_blueprint("console", __name__)

# Fields shown in the detail page's table, in this order (payload and result get their own blocks).
# Characters of a payload's JSON text (and of an error) a /tasks row loads for its search snippet:
# the page never loads whole payloads (issue 10 item 6).
LIST_MATCH_CHARS = 2000
DETAIL_FIELDS = [
    "id", "task_type", "status", "priority", "retry_count", "max_retry_count", "retry_strategy",
    "retry_interval", "attempts", "recovery_count", "created_by", "principal", "created_at", "updated_at",
    "started_at", "finished_at", "next_run_at", "worker_id", "progress", "progress_message",
    "idempotency_key", "notify_url", "parent_id", "cancel_requested_at",
]


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


@bp.get("/")
def overview() -> Response:
    """Counts per status, outcomes per minute (chart), queue age, workers, Redis; polled live."""
    data = stats.overview()
    return render("overview.html", {"overview-live": "partials/overview_live.html"},
                  data=data, chart=throughput_chart(data.throughput), redis=redis_state(),
                  consumer_redis_ok=current_app.extensions["async_task"].redis_ok,
                  claiming=claiming_state())


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
        # Payloads and errors stay in the database: rows carry their first characters only.
        page = AsyncTaskService().list_task_previews(query.filters, query.limit, query.cursor, LIST_MATCH_CHARS)
    search = query.filters.search
    return {
        "query": query,
        "page": page,
        "matches": {task.id: search_match(search, task.error_head,
                                          mask_json_text(task.payload_head, sensitive_fields_for(task.task_type)))
                    for task in page.items}
        if search else {},
        "live": any(not stats.is_terminal(task.status) for task in page.items),
        # Why waiting rows have not started (a limit at its ceiling, a pause): a few queries a page.
        "waiting": AsyncTaskService().waiting_reasons(
            [task.id for task in page.items if task.status in WAITING_STATUSES]),
        "selected": _selected_ids(),
        "task_types": current_app.extensions["async_task"].registry.task_types(),
        "list_url": query.url(query.cursor),
    }


@bp.get("/tasks")
def tasks() -> Response:
    """Filterable, keyset-paginated task list; htmx refreshes the rows while any can change."""
    query = parse_task_query(request.args)
    context = _task_list_context(query)
    status = 400 if query.errors else 200
    response = render("tasks.html", {"task-results": "partials/task_results.html",
                                     "task-rows": "partials/task_rows_live.html"}, status, **context)
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


def task_actions(task: AsyncTask) -> dict[str, bool]:
    """Which of the operator's buttons this task shows, from the transition table."""
    return {
        "can_cancel": may("cancel", task.status),
        # A running task can only be asked to stop, once.
        "can_request_cancel": may("request_cancel", task.status) and task.cancel_requested_at is None,
        "can_retry": may("retry", task.status),
        "can_resubmit": may("resubmit", task.status),
    }


def _detail_context(task: AsyncTask, message: str | None = None, level: str = "info") -> dict[str, Any]:
    events = AsyncTaskService().events_for(task.id)
    notifications = stats.notifications_for(task.id)
    fields = task_to_dict(task)
    secrets = secret_values(task.payload, sensitive_fields_for(task.task_type))
    return {
        "task": task,
        # Sensitive payload values never reach the page, not even inside an error or traceback.
        "payload": fields["payload"],
        "error": fields["error"],
        # A webhook URL may carry credentials (https://user:secret@…): never on screen.
        "fields": [(name, mask_credentials(fields.get(name)) if name == "notify_url"
                    # times in the console's one clock (a <time> element), not the API's UTC text
                    else clock_time(getattr(task, name)) if name.endswith("_at") and fields.get(name)
                    else fields.get(name))
                   for name in DETAIL_FIELDS],
        "timeline": [dataclasses.replace(entry, message=scrub_text(entry.message, secrets),
                                         traceback=scrub_text(entry.traceback, secrets))
                     for entry in timeline(events, stats.audit_for_task(task.id))],
        "attempts": [dataclasses.replace(attempt, message=scrub_text(attempt.message, secrets),
                                         traceback=scrub_text(attempt.traceback, secrets))
                     for attempt in attempts(events)],
        "notifications": notifications,
        "notifications_live": (not stats.is_terminal(task.status)
                               or any(n.status == "PENDING" for n in notifications)),
        "live": not stats.is_terminal(task.status),
        "waiting": (AsyncTaskService().waiting_reasons([task.id]).get(task.id)
                    if task.status in WAITING_STATUSES else None),
        **task_actions(task),
        "lineage": lineage_of(task, events),
        "message": message,
        "level": level,
        # The live part's poll also refreshes the fields table, out of band.
        "oob": hx_target() == "task-live",
    }


@bp.get("/tasks/<int:task_id>")
def task_detail(task_id: int) -> Response:
    """Every field, payload and result, attempts, timeline, notifications; live until terminal."""
    task = _load_task(task_id)
    return render("task_detail.html", {"task-live": "partials/task_live.html",
                                       "task-notifications": "partials/task_notifications.html"},
                  **_detail_context(task))


def _after_transition(task_id: int, message: str, level: str, status: int) -> Response:
    """The answer to cancel or retry: htmx gets the refreshed live part, a form a redirect."""
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
    """Cancel a PENDING or RETRYING task, or ask a running one to stop (operator)."""
    try:
        task = AsyncTaskService().cancel_task(task_id, actor=actor_name())
    except InvalidTransition as exc:
        return _after_transition(task_id, exc.message, "error", 409)
    except TaskNotFound:
        raise NotFound(f"task {task_id} does not exist") from None
    message = (gettext("Task %(id)s cancelled.", id=task_id) if task.status == "CANCELLED" else
               gettext("Cancel requested for running task %(id)s; it stops when its processor "
                       "next checks.", id=task_id))
    return _after_transition(task_id, message, "info", 200)


@bp.post("/tasks/<int:task_id>/retry")
@requires(Role.OPERATOR)
def retry_task(task_id: int) -> Response:
    """Send a FAILURE task back to PENDING (operator)."""
    try:
        AsyncTaskService().retry_task(task_id, actor=actor_name())
    except InvalidTransition as exc:
        return _after_transition(task_id, exc.message, "error", 409)
    except TaskNotFound:
        raise NotFound(f"task {task_id} does not exist") from None
    return _after_transition(task_id, gettext("Task %(id)s sent back to PENDING.", id=task_id), "info", 200)


# -- edit and retry ----------------------------------------------------------------------------


def _edit_retry_page(task: AsyncTask, payload_text: str, error: str | None = None,
                     error_field: str | None = None, status: int = 200) -> Response:
    processor = current_app.extensions["async_task"].registry.get(task.task_type)
    payload_type = getattr(processor, "payload_type", None) if processor is not None else None
    return make_response(render_template(
        "edit_retry.html", task=task, payload_text=payload_text, error=error, error_field=error_field,
        payload_type=getattr(payload_type, "__name__", None), payload_fields=payload_fields(payload_type),
        can_resubmit=may("resubmit", task.status)), status)


@bp.get("/tasks/<int:task_id>/edit-retry")
@requires(Role.OPERATOR)
def edit_retry_form(task_id: int) -> Response:
    """The payload of a FAILURE or CANCELLED task in an editor, to resubmit it as a new task."""
    task = _load_task(task_id)
    status = 200 if may("resubmit", task.status) else 409
    # Sensitive values show as the mask; a mask sent back keeps the stored value (restore_masked).
    payload = mask_payload(task.payload, sensitive_fields_for(task.task_type))
    return _edit_retry_page(task, json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True),
                            status=status)


@bp.post("/tasks/<int:task_id>/edit-retry")
@requires(Role.OPERATOR)
def edit_retry(task_id: int) -> Response:
    """Resubmit the edited payload as a new task linked to this one; errors keep the typed text."""
    text = request.form.get("payload", "")
    try:
        payload = parse_json_text(text)
    except ValidationError as exc:
        return _edit_retry_page(_load_task(task_id), text, exc.message, exc.field, 400)
    try:
        new_task = AsyncTaskService().resubmit_task(task_id, payload, actor=actor_name(),
                                                    principal=f"user:{actor_name()}")
    except TaskNotFound:
        raise NotFound(f"task {task_id} does not exist") from None
    except InvalidTransition as exc:
        return _edit_retry_page(_load_task(task_id), text, exc.message, None, 409)
    except ValidationError as exc:
        return _edit_retry_page(_load_task(task_id), text, exc.message, exc.field or "payload", 422)
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
    result = BulkOperations().apply(selection, action, actor_name())
    message = (ngettext("%(num)s task cancelled", "%(num)s tasks cancelled", result.changed)
               if action.value == "cancel"
               else ngettext("%(num)s task sent back to PENDING", "%(num)s tasks sent back to PENDING", result.changed))
    if result.unchanged:
        message += gettext("; %(count)s left unchanged (their status no longer allowed it)", count=result.unchanged)
    message += gettext(".")
    if not is_htmx():
        flash(message, "info")
        return make_response(redirect(query.url()), 303)
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
    limits = {item["task_type"]: item for item in AsyncTaskService().limits_overview()}
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
            "limits": limits.get(task_type),  # concurrency, rate, time limits, isolation (with overrides)
        })
    return render("task_types.html", {}, processors=processors, unregistered=counts, claiming=claiming)


@bp.post("/task-types/<task_type>/<any(pause, resume):action>")
@requires(Role.OPERATOR)
def pause_or_resume_task_type(task_type: str, action: str) -> Response:
    """Stop or restart claiming one task type, or every type with ``*`` (submissions keep queueing)."""
    service = AsyncTaskService()
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
    query = parse_audit_query(request.args)
    page = AuditPage([], None) if query.errors else stats.audit_page(query.limit, query.cursor, query.actor,
                                                                      query.action)
    entries = audit_rows(page.items, existing_usernames(login_names(page.items)))
    return render("audit.html", {}, 400 if query.errors else 200, page=page, query=query, entries=entries,
                  actor=query.actor or "", action=query.action or "")
