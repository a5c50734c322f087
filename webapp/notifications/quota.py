"""How many notifications an API token's tasks may still send this hour.

An admin may limit a token (``flask tokens create|update NAME --notifications-per-hour N``): the
report's attacker queued 20 tasks whose creator was a victim's address and got 20 mails out of
the service's own sender. When a task finishes, the outbox writer asks ``quota_problem`` before
it queues anything; past the limit the rows are written SKIPPED with the reason instead, so the
task's outcome commits as always and the operator sees why no mail went out.

The count is of the token's notifications created in the last hour (not SKIPPED ones); two
tasks finishing at the same instant may both pass the last free slot, so the limit holds to
within the number of concurrent finishes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Integer, String, column, func, select, table
from sqlalchemy.orm import Session

from ..tasks.models import AsyncTask, Notification, NotificationStatus

WINDOW = timedelta(hours=1)
TOKEN_PRINCIPAL_PREFIX = "token:"
# The two columns of ``api_token`` (webapp/accounts/models.py) read here, as a bare table: the
# engine calls this module while it finishes tasks, and the accounts package depends on the
# engine, not the other way round.
API_TOKEN = table("api_token", column("name", String), column("notifications_per_hour", Integer))


def hourly_limit(session: Session, principal: str | None) -> tuple[str, int] | None:
    """``(token name, limit)`` when ``principal`` is a token with a notification limit."""
    if not principal or not principal.startswith(TOKEN_PRINCIPAL_PREFIX):
        return None
    name = principal[len(TOKEN_PRINCIPAL_PREFIX):]
    limit = session.scalar(select(API_TOKEN.c.notifications_per_hour).where(API_TOKEN.c.name == name))
    return (name, int(limit)) if limit is not None else None


def sent_in_window(session: Session, principal: str, now: datetime) -> int:
    """Notifications (not SKIPPED) of this principal's tasks created in the last hour."""
    since = now - WINDOW
    return int(session.scalar(
        select(func.count()).select_from(Notification).join(AsyncTask, AsyncTask.id == Notification.task_id)
        .where(AsyncTask.principal == principal, AsyncTask.finished_at >= since,
               Notification.created_at >= since, Notification.status != NotificationStatus.SKIPPED.value)
    ) or 0)


def quota_problem(session: Session, principal: str | None, wanted: int, now: datetime) -> str | None:
    """Why ``wanted`` more notifications of this principal's task must be SKIPPED, or ``None``."""
    if wanted <= 0:
        return None
    limited = hourly_limit(session, principal)
    if limited is None:
        return None
    name, limit = limited
    used = sent_in_window(session, principal or "", now)
    if used + wanted <= limit:
        return None
    return (f"token {name!r} may send {limit} notification(s) per hour and {used} were sent in the "
            f"last hour (flask tokens update {name} --notifications-per-hour N)")
