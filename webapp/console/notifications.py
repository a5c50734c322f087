"""The notifications page: the outbox with filters in the URL, keyset pages, counts per status,
live while anything is PENDING, and a resend of FAILED notifications for operators.

Its own blueprint (login guard, error pages, ``no-store``), registered by ``init_console``.
Reads go through ``webapp.notifications.queries`` and ``stats``; the resend through
``resend_notification``, which audits it and owns its transaction. Nothing here writes SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from flask import Response, current_app, flash, make_response, redirect, request, url_for
from flask_babel import gettext
from werkzeug.datastructures import MultiDict

from ..accounts.models import Role
from ..config import engine_settings
from ..notifications.dev_mail import list_dev_mails
from ..notifications.outbox import resend_notification
from ..notifications.queries import (
    NotificationFilter,
    NotificationPage,
    list_notifications,
    validate_notification_status,
    validate_notification_type,
)
from ..tasks import stats
from ..tasks.errors import InvalidTransition
from ..tasks.models import NotificationStatus
from ..tasks.processor import NotificationType
from .auth import protected_blueprint, requires, safe_next
from .list_query import ArgsReader, ListQuery
from .responses import error_response, htmx_message, hx_target, is_htmx, render
from .sessions import actor_name

bp = protected_blueprint("notifications", __name__)

MAX_RECIPIENT = 2000  # the column's length: a longer filter can match nothing
NOTIFICATION_STATUSES = [status.value for status in NotificationStatus]
NOTIFICATION_TYPES = [kind.value for kind in NotificationType]


@dataclass
class NotificationQuery(ListQuery):
    """A parsed notifications request: the filter, the page, and what the form should show."""

    ENDPOINT: ClassVar[str] = "notifications.notifications"

    filters: NotificationFilter = field(default_factory=NotificationFilter)

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
        return params


def parse_notification_query(args: MultiDict[str, str]) -> NotificationQuery:
    """Read the page's parameters; every bad one is named in ``errors`` and keeps its text."""
    query = NotificationQuery()
    read = ArgsReader(args, query)
    values: dict[str, Any] = {
        "statuses": read.choices("status", validate_notification_status),
        "type": read.parsed("type", validate_notification_type),
        "task_id": read.task_id("task_id"),
        "recipient": read.text("recipient", MAX_RECIPIENT),
    }
    read.page()
    query.filters = NotificationFilter(**{name: value for name, value in values.items() if value is not None})
    return query


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
        "statuses": NOTIFICATION_STATUSES,
        "types": NOTIFICATION_TYPES,
        "list_url": query.url(query.cursor),
        "dev_mail": bool(engine_settings(current_app).dev_mail_dir),
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


@bp.get("/notifications/dev-mail")
def dev_mail() -> Response:
    """Mails the development outbox captured (``ASYNC_TASK_DEV_MAIL_DIR``), newest first."""
    folder = engine_settings(current_app).dev_mail_dir
    return render("dev_mail.html", {}, 200, folder=folder, mails=list_dev_mails(folder))


@bp.post("/notifications/<int:notification_id>/resend")
@requires(Role.OPERATOR)
def resend_notification_view(notification_id: int) -> Response:
    """Send a FAILED notification again (operator): PENDING with fresh attempts, audited."""
    back = safe_next(request.form.get("next") or url_for("notifications.notifications"))
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
    response = htmx_message(message)
    response.headers["HX-Trigger"] = "notifications-changed"
    return response
