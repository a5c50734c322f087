"""The notifications page: the outbox with filters in the URL, keyset pages, counts per status,
live while anything is PENDING, and a resend of FAILED notifications for operators.

Routes join the console blueprint (login guard, error pages, ``no-store``), so importing this
module before the blueprint is registered is all it takes. Reads go through
``webapp.notifications.queries`` and ``stats``; the resend through ``resend_notification``, which
audits it. Nothing here writes SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Response, flash, make_response, redirect, render_template, request, url_for
from flask_babel import gettext
from werkzeug.datastructures import MultiDict

from ..accounts.models import Role
from ..extensions import db
from ..notifications.outbox import resend_notification
from ..notifications.queries import (
    NotificationFilter,
    NotificationPage,
    list_notifications,
    validate_notification_status,
    validate_notification_type,
)
from ..tasks import stats
from ..tasks.errors import InvalidTransition, ValidationError
from ..tasks.models import NotificationStatus
from ..tasks.processor import NotificationType
from ..tasks.service import validate_task_id
from .auth import actor_name, current_user, is_htmx, requires, safe_next
from .task_query import KeysetQueryString
from .views import bp, error_response, hx_target, render

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_RECIPIENT = 2000  # the column's length: a longer filter can match nothing
NOTIFICATION_STATUSES = [status.value for status in NotificationStatus]
NOTIFICATION_TYPES = [kind.value for kind in NotificationType]


@dataclass
class NotificationQuery(KeysetQueryString):
    """A parsed notifications request: the filter, the page, and what the form should show."""

    filters: NotificationFilter = field(default_factory=NotificationFilter)
    cursor: int | None = None
    limit: int = DEFAULT_LIMIT
    form: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def filter_params(self) -> list[tuple[str, str]]:
        """The filter as (name, value) pairs in canonical order (no cursor)."""
        f = self.filters
        params: list[tuple[str, str]] = [("status", status) for status in f.statuses]
        if f.type:
            params.append(("type", f.type))
        if f.task_id is not None:
            params.append(("task_id", str(f.task_id)))
        if f.recipient:
            params.append(("recipient", f.recipient))
        if self.limit != DEFAULT_LIMIT:
            params.append(("limit", str(self.limit)))
        return params


    def url(self, cursor: int | None = None) -> str:
        """The page's canonical URL for this filter (and ``cursor``)."""
        query = self.query_string(cursor)
        return url_for("console.notifications") + (f"?{query}" if query else "")


def _whole_number(text: str, name: str, low: int, high: int) -> int:
    try:
        number = int(text)
    except ValueError:
        raise ValidationError(f"{name} must be a whole number", field=name) from None
    if not low <= number <= high:
        raise ValidationError(f"{name} must be between {low} and {high}", field=name)
    return number


def parse_notification_query(args: MultiDict[str, str]) -> NotificationQuery:
    """Read the page's parameters; every bad one is named in ``errors`` and keeps its text."""
    query = NotificationQuery()
    errors = query.errors
    form: dict[str, Any] = {name: (args.get(name) or "").strip()
                            for name in ("type", "task_id", "recipient", "limit", "cursor")}
    values: dict[str, Any] = {}

    statuses: list[str] = []
    for raw in args.getlist("status"):
        for part in raw.split(","):
            if not part.strip():
                continue
            try:
                status = validate_notification_status(part.strip())
            except ValidationError as exc:
                errors["status"] = exc.message
                continue
            if status not in statuses:
                statuses.append(status)
    form["status"] = statuses
    values["statuses"] = tuple(statuses)

    if form["type"]:
        try:
            values["type"] = validate_notification_type(form["type"])
        except ValidationError as exc:
            errors["type"] = exc.message
    if form["task_id"]:
        try:
            values["task_id"] = validate_task_id(form["task_id"].lstrip("#"), "task_id")
        except ValidationError as exc:
            errors["task_id"] = exc.message
    if form["recipient"]:
        if len(form["recipient"]) > MAX_RECIPIENT:
            errors["recipient"] = f"recipient must be at most {MAX_RECIPIENT} characters"
        else:
            values["recipient"] = form["recipient"]
    if form["limit"]:
        try:
            query.limit = _whole_number(form["limit"], "limit", 1, MAX_LIMIT)
        except ValidationError as exc:
            errors["limit"] = exc.message
    if form["cursor"]:
        try:
            query.cursor = validate_task_id(form["cursor"], "cursor")
        except ValidationError as exc:
            errors["cursor"] = exc.message

    query.filters = NotificationFilter(**values)
    query.form = form
    return query


def _can_operate() -> bool:
    user = current_user()
    return user is not None and user.can(Role.OPERATOR)


def _page_context(query: NotificationQuery) -> dict[str, Any]:
    page = NotificationPage([], None)
    if not query.errors:
        page = list_notifications(query.filters, query.limit, query.cursor)
    counts = stats.notification_status_counts_at_scale()
    return {
        "query": query,
        "page": page,
        "counts": counts,
        # Something will change while a notification waits for delivery.
        "live": counts.get("PENDING", 0) > 0 or any(note.status == "PENDING" for note in page.items),
        "can_operate": _can_operate(),
        "statuses": NOTIFICATION_STATUSES,
        "types": NOTIFICATION_TYPES,
        "list_url": query.url(query.cursor),
    }


@bp.get("/notifications")
def notifications() -> Response:
    """The notification outbox, filterable and keyset-paginated; refreshed live while any is PENDING."""
    query = parse_notification_query(request.args)
    status = 400 if query.errors else 200
    response = render("notifications.html", {"notification-results": "partials/notifications_results.html",
                                             "notification-live": "partials/notifications_live.html"},
                      status, **_page_context(query))
    if hx_target() == "notification-results":
        # The filter form's request: the canonical URL goes into the address bar.
        response.headers["HX-Push-Url"] = "false" if query.errors else query.url(query.cursor)
    return response


@bp.post("/notifications/<int:notification_id>/resend")
@requires(Role.OPERATOR)
def resend_notification_view(notification_id: int) -> Response:
    """Send a FAILED notification again (operator): PENDING with fresh attempts, audited."""
    back = safe_next(request.form.get("next") or url_for("console.notifications"))
    db.session.rollback()  # end the request's read so the write can take SQLite's lock
    try:
        resend_notification(notification_id, actor_name())
    except InvalidTransition as exc:
        if not is_htmx():
            flash(exc.message, "error")
            return make_response(redirect(back), 303)
        response = error_response(409, exc.message)
        response.headers["HX-Trigger"] = "notifications-changed"
        return response
    message = gettext("Notification %(id)s queued to be sent again.", id=notification_id)
    if not is_htmx():
        flash(message, "info")
        return make_response(redirect(back), 303)
    response = make_response(render_template("partials/message.html", message=message, level="info"))
    response.headers["HX-Retarget"] = "#messages"
    response.headers["HX-Reswap"] = "innerHTML"
    response.headers["HX-Trigger"] = "notifications-changed"
    return response
