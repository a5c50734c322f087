"""Console sessions: who is logged in, what they may do, and when their session ends.

A session ends when the user is disabled, changes password, logs out (the session generation),
after ``ASYNC_TASK_SESSION_IDLE_TIMEOUT`` seconds without activity, and
``ASYNC_TASK_SESSION_LIFETIME`` seconds after login whatever happens. A page polling itself
is not activity: ``static/console.js`` marks those requests with the ``X-Console-Poll``
header, so a console left open on a screen logs out like any idle one.

The user's role and permissions are worked out once per request (``g.user``); every template
gets them as ``current`` (``current.can_operate``, ``current.is_admin``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from flask import current_app, flash, g, request, session
from flask_babel import gettext

from ..accounts.login import LoginIdentity, session_identity
from ..accounts.models import ROLE_RANK, Role

POLL_HEADER = "X-Console-Poll"


@dataclass(frozen=True)
class CurrentUser:
    """The logged-in user as plain values, with their permissions (no ORM object kept)."""

    id: int
    username: str
    role: str
    can_operate: bool
    is_admin: bool
    time_zone: str = "local"  # times shown in the browser's zone ("local") or in UTC ("utc")

    @classmethod
    def of(cls, identity: LoginIdentity) -> CurrentUser:
        """The user of ``identity`` with the permissions of their role."""
        return cls(identity.id, identity.username, identity.role, can_operate=_at_least(identity.role, Role.OPERATOR),
                   is_admin=_at_least(identity.role, Role.ADMIN), time_zone=identity.time_zone)

    def can(self, role: Role | str) -> bool:
        """Whether this user's role is at least ``role``."""
        return _at_least(self.role, role)


def _at_least(role: str, needed: Role | str) -> bool:
    return ROLE_RANK[Role(role)] >= ROLE_RANK[Role(needed)]


def start_session(identity: LoginIdentity) -> None:
    """A fresh session (and CSRF token) for the user who just logged in."""
    session.clear()
    now = int(time.time())
    session.update(user_id=identity.id, pw=identity.fingerprint, gen=identity.generation, iat=now, seen=now)
    session.permanent = True


def keep_session_after_password_change(identity: LoginIdentity) -> None:
    """The user changed their own password: this session goes on, every other one ends."""
    session.update(pw=identity.fingerprint, gen=identity.generation)


def load_current_user() -> None:
    """``before_request``: set ``g.user`` from a valid, unexpired session, or clear the session."""
    g.user = None
    user_id = session.get("user_id")
    if user_id is None or request.endpoint == "static":
        return
    if _expired():
        session.clear()
        flash(gettext("Your session has ended. Please log in again."), "info")
        return
    identity = session_identity(user_id)
    if (identity is None or session.get("pw") != identity.fingerprint
            or session.get("gen") != identity.generation):
        session.clear()
        return
    g.user = CurrentUser.of(identity)
    if not is_poll():
        session["seen"] = int(time.time())


def _expired() -> bool:
    now = time.time()
    config = current_app.config
    started = _number(session.get("iat"))
    seen = _number(session.get("seen"))
    if started is None or seen is None:  # a session from before lifetimes were kept
        return True
    return (now - started > config["ASYNC_TASK_SESSION_LIFETIME"]
            or now - seen > config["ASYNC_TASK_SESSION_IDLE_TIMEOUT"])


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def is_poll() -> bool:
    """A page refreshing itself (a GET marked by ``console.js``): not the user's activity."""
    return request.method in ("GET", "HEAD") and request.headers.get(POLL_HEADER) == "1"


def current_user() -> CurrentUser | None:
    """The logged-in user of this request, or ``None``."""
    return cast(CurrentUser | None, g.get("user"))


def actor_name() -> str:
    """The name recorded in events and the audit log for this request's user."""
    user = current_user()
    return user.username if user is not None else "anonymous"
