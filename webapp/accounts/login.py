"""Checking a console login: throttle, password, counters and audit, in one transaction of its own.

The console's login view only turns a ``LoginOutcome`` into a page; everything that is
written (failure counters, ``last_login_at``, the audit row) is written and committed here.

What the audit log keeps of an attempt: a successful or failed login names the user only when
the typed username is an existing user (someone's password typed into the username box must
not end up on the ``/audit`` page); throttled attempts are one row per address per window,
whose ``detail.count`` grows with each refused attempt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from ..extensions import db
from ..tasks.audit import record_audit
from ..tasks.models import AuditEntry, utcnow
from .models import User
from .throttle import LoginThrottle
from .users import authenticate, begin_write, find_user, record_login

MAX_USERNAME = 255


@dataclass(frozen=True)
class LoginIdentity:
    """What a session needs of the user who just logged in (plain values, no ORM object)."""

    id: int
    username: str
    role: str
    fingerprint: str
    generation: int
    time_zone: str = "local"  # the console's clock for this user (models.CLOCK_CHOICES)


@dataclass(frozen=True)
class LoginOutcome:
    """The answer to a login attempt: an identity, or why not (``wait_seconds`` > 0: throttled)."""

    identity: LoginIdentity | None
    wait_seconds: float = 0.0

    @property
    def throttled(self) -> bool:
        """Whether the attempt was refused before the password was checked."""
        return self.wait_seconds > 0


def password_fingerprint(password_hash: str) -> str:
    """Changes whenever the password does, so a password change ends every other session."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def identity_of(user: User) -> LoginIdentity:
    """The session values of ``user``."""
    return LoginIdentity(user.id, user.username, user.role, password_fingerprint(user.password_hash),
                         user.session_generation, user.time_zone)


def session_identity(user_id: Any) -> LoginIdentity | None:
    """The identity a session of ``user_id`` should match, or ``None`` if the user is gone or disabled.

    Ends its read, so a later write in the same request can take SQLite's write lock up front.
    """
    try:
        user = db.session.get(User, user_id) if isinstance(user_id, int) else None
        return identity_of(user) if user is not None and user.active else None
    finally:
        db.session.rollback()


def attempt_login(throttle: LoginThrottle, username: str, password: str, address: str | None) -> LoginOutcome:
    """Check one login attempt and record it (committed); a throttled one never checks the password."""
    name = username[:MAX_USERNAME]
    session = db.session()
    try:
        # Read and check first, outside any write transaction: the password hash takes a tenth of
        # a second, and must not hold SQLite's write lock (every worker waits on it) meanwhile.
        wait = throttle.wait_seconds(session, name, address)
        identity, known = None, False
        if wait <= 0:
            user = authenticate(name, password) if name and password else None
            identity = identity_of(user) if user is not None else None
            known = identity is not None or (bool(name) and find_user(name) is not None)
        begin_write()  # ends the reads; on SQLite takes the write lock up front
        if wait > 0:
            _count_throttled(throttle, address)
        elif identity is None:
            throttle.record_failure(session, name, address)
            record_audit(name if known else None, "login", "user", name if known else None, outcome="failed",
                         detail={"ip": address} if known else {"ip": address, "unknown_user": True})
        else:
            throttle.record_success(session, name, address)
            record_login(identity.id)
            record_audit(identity.username, "login", "user", identity.username, detail={"ip": address})
        db.session.commit()
        return LoginOutcome(identity, max(wait, 0.0))
    except BaseException:
        db.session.rollback()
        raise


def _count_throttled(throttle: LoginThrottle, address: str | None) -> None:
    """One audit row per address per window, its ``count`` kept up to date (not a row per attempt)."""
    session = db.session()
    count = throttle.record_throttled(session, address)
    detail: dict[str, Any] = {"ip": address, "count": count.failures,
                              "window_seconds": int(throttle.policy.window.total_seconds())}
    entry = (session.get(AuditEntry, count.audit_id) if count.audit_id is not None
             else _window_row(address, count.window_started_at))
    if entry is None and count.failures == 1:  # the window's first refusal writes the row
        record_audit(None, "login", "address", address, outcome="throttled", detail=detail)
        session.flush()
        entry = _window_row(address, count.window_started_at)
    elif entry is not None:
        entry.detail = {**(entry.detail or {}), **detail, "last_at": utcnow().isoformat()}
    if entry is not None and count.audit_id is None:
        throttle.attach_audit_row(session, address, entry.id)


def _window_row(address: str | None, window_started_at: datetime) -> AuditEntry | None:
    """The audit row of ``address``'s throttled attempts in the window that began then, if written yet."""
    return db.session.scalars(select(AuditEntry).where(
        AuditEntry.action == "login", AuditEntry.outcome == "throttled", AuditEntry.target_type == "address",
        AuditEntry.target_id == (None if address is None else str(address)[:MAX_USERNAME]),
        AuditEntry.at >= window_started_at - timedelta(seconds=1))
        .order_by(AuditEntry.id.desc()).limit(1)).first()
