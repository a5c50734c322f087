"""Reading the notification outbox: what the console and the API show.

No HTTP here; front ends map the errors (``ValidationError``, ``NotificationNotFound``) to their
own form, as they do for tasks. The operator's resend is a state change: ``outbox.resend_notification``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.sql.elements import ColumnElement

from ..extensions import db
from ..tasks.errors import ValidationError
from ..tasks.models import Notification, NotificationStatus
from ..tasks.processor import NotificationType
from ..tasks.queries import Page, keyset_page
from ..tasks.validation import validate_task_id
from .outbox import NotificationNotFound


@dataclass(frozen=True)
class NotificationFilter:
    """Filters of the notifications page (all optional)."""

    statuses: tuple[str, ...] = ()
    type: str | None = None
    task_id: int | None = None
    recipient: str | None = None


NotificationPage = Page[Notification]  # one keyset page, newest first (the task list's and audit's helper)


def validate_notification_status(value: Any) -> str:
    """One of PENDING, SENT, FAILED, SKIPPED (case-insensitive), or a ValidationError."""
    try:
        return NotificationStatus(str(value).upper()).value
    except ValueError:
        allowed = ", ".join(s.value for s in NotificationStatus)
        raise ValidationError(f"unknown notification status {value!r}; expected one of {allowed}",
                              field="status") from None


def validate_notification_type(value: Any) -> str:
    """EMAIL or WEBHOOK (case-insensitive), or a ValidationError."""
    try:
        return NotificationType(str(value).upper()).value
    except ValueError:
        allowed = ", ".join(t.value for t in NotificationType)
        raise ValidationError(f"unknown notification type {value!r}; expected one of {allowed}",
                              field="type") from None


def _filter_clauses(filters: NotificationFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if filters.statuses:
        clauses.append(Notification.status.in_([validate_notification_status(s) for s in filters.statuses]))
    if filters.type:
        clauses.append(Notification.type == validate_notification_type(filters.type))
    if filters.task_id is not None:
        clauses.append(Notification.task_id == validate_task_id(filters.task_id, "task_id"))
    if filters.recipient:
        clauses.append(Notification.recipient == filters.recipient)
    return clauses


def filtered_notifications(filters: NotificationFilter) -> Select[Any]:
    """``SELECT`` of the notifications matching ``filters`` (unordered; the page and export share it)."""
    return select(Notification).where(*_filter_clauses(filters))


def list_notifications(filters: NotificationFilter | None = None, limit: int = 50,
                       cursor: int | None = None) -> NotificationPage:
    """A keyset page of notifications matching ``filters``, newest first, below ``cursor``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
        raise ValidationError("limit must be an integer from 1 to 500", field="limit")
    query = filtered_notifications(filters or NotificationFilter())
    below = validate_task_id(cursor, "cursor") if cursor is not None else None
    return keyset_page(db.session(), query, Notification.id, limit, below)


def notifications_for_task(task_id: Any) -> list[Notification]:
    """Every notification of one task, oldest first (for the task page)."""
    task_id = validate_task_id(task_id, "task_id")
    return list(db.session.scalars(
        select(Notification).where(Notification.task_id == task_id).order_by(Notification.id)))


def count_notifications_by_status() -> dict[str, int]:
    """{status: count} over all notifications, every status present."""
    counts = {status.value: 0 for status in NotificationStatus}
    query = select(Notification.status, func.count()).group_by(Notification.status)
    counts.update({status: count for status, count in db.session.execute(query)})
    return counts


def get_notification(notification_id: Any) -> Notification | None:
    """The notification with that id, or ``None``."""
    return db.session.get(Notification, validate_task_id(notification_id, "id"))


def require_notification(notification_id: Any) -> Notification:
    """The notification with that id, or ``NotificationNotFound``."""
    note = get_notification(notification_id)
    if note is None:
        raise NotificationNotFound(f"notification {notification_id} does not exist")
    return note
