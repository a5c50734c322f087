"""Console users: create them, check passwords, and slow down password guessing.

Passwords are stored as werkzeug hashes (scrypt by default). Failed logins are kept in the
audit log (action ``login``, outcome ``failed``), so the per-username slow-down holds across
every web process and survives restarts; a per-address counter in memory adds a second brake
against one client trying many usernames.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..tasks.audit import record_audit
from ..tasks.errors import ValidationError
from ..tasks.models import AuditEntry, utcnow
from .models import Role, User

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,79}$")
MIN_PASSWORD_LENGTH = 8

# A hash to compare against when the username does not exist, so both answers take as long.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


class UserExists(ValidationError):
    """A user with that username already exists."""

    code = "user_exists"


def validate_username(username: str) -> str:
    """A username: 1-80 letters, digits, ``_ . @ -``, starting with a letter or digit."""
    name = (username or "").strip()
    if not USERNAME_PATTERN.match(name):
        raise ValidationError("username must be 1-80 characters: letters, digits, _ . @ - "
                              "(starting with a letter or digit)", field="username")
    return name


def validate_role(role: str) -> str:
    """One of viewer, operator, admin."""
    try:
        return Role((role or "").strip().lower()).value
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValidationError(f"unknown role {role!r}; expected one of {allowed}", field="role") from None


def validate_password(password: str) -> str:
    """At least ``MIN_PASSWORD_LENGTH`` characters."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"password must have at least {MIN_PASSWORD_LENGTH} characters",
                              field="password")
    return password


def begin_write() -> None:
    """Start a write transaction; on SQLite take the write lock up front (BEGIN IMMEDIATE).

    A deferred SQLite transaction that read first can be refused when it later writes while
    another connection (a worker) has written in between; waiting in line avoids that. An
    open transaction that only read is ended first; one with pending changes is kept.
    """
    session = db.session()
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            return
        session.rollback()
    if session.get_bind().dialect.name == "sqlite":
        session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})


def find_user(username: str) -> User | None:
    """The user with that username, or ``None``."""
    return db.session.scalars(select(User).where(User.username == username)).first()


def count_users() -> int:
    """How many console users exist (active or not)."""
    return int(db.session.scalar(select(func.count()).select_from(User)) or 0)


def list_users() -> list[User]:
    """Every console user, by username."""
    return list(db.session.scalars(select(User).order_by(User.username)))


def create_user(username: str, password: str, role: str, actor: str | None = None) -> User:
    """Create a user with a hashed password; the change is audited. Bad input writes nothing."""
    name = validate_username(username)
    role_value = validate_role(role)
    validate_password(password)
    begin_write()
    if find_user(name) is not None:
        db.session.rollback()
        raise UserExists(f"user {name!r} already exists", field="username")
    user = User(username=name, password_hash=generate_password_hash(password), role=role_value,
                active=True, created_at=utcnow())
    db.session.add(user)
    record_audit(actor, "user.create", "user", name, detail={"role": role_value})
    db.session.commit()
    return user


def set_user_role(username: str, role: str, actor: str | None) -> User:
    """Change a user's role (audited)."""
    begin_write()
    user = _require_user(username)
    previous = user.role
    user.role = validate_role(role)
    record_audit(actor, "user.role", "user", user.username,
                 detail={"from": previous, "to": user.role})
    db.session.commit()
    return user


def set_user_active(username: str, active: bool, actor: str | None) -> User:
    """Enable or disable a user's login (audited); a disabled user is logged out on next request."""
    begin_write()
    user = _require_user(username)
    user.active = active
    record_audit(actor, "user.enable" if active else "user.disable", "user", user.username)
    db.session.commit()
    return user


def _require_user(username: str) -> User:
    user = find_user(username)
    if user is None:
        db.session.rollback()
        raise ValidationError(f"user {username!r} does not exist", field="username")
    return user


def authenticate(username: str, password: str) -> User | None:
    """The active user whose password matches, else ``None`` (in about the same time either way)."""
    user = find_user(username) if username else None
    if user is None:
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    if not check_password_hash(user.password_hash, password or "") or not user.active:
        return None
    return user


def generate_password() -> str:
    """A random password for generated accounts (about 120 bits)."""
    return secrets.token_urlsafe(15)


@dataclass(frozen=True)
class LoginPolicy:
    """How failed logins are slowed down.

    After ``free_failures`` failures for one username within ``window``, the next attempt must
    wait ``base_delay * 2 ** (extra failures)`` seconds after the last failure, capped at
    ``max_delay``; a correct password during the wait is refused too, or the wait would mean
    nothing. One address gets ``per_address_failures`` failures per window, across usernames.
    """

    free_failures: int = 5
    window: timedelta = timedelta(minutes=15)
    base_delay: float = 30.0
    max_delay: float = 900.0
    per_address_failures: int = 30


class LoginThrottle:
    """Decides whether a login attempt may be checked now, from recent failures."""

    def __init__(self, policy: LoginPolicy | None = None) -> None:
        self.policy = policy or LoginPolicy()
        self._address_failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, username: str, address: str | None) -> float:
        """Seconds until this username / address may try again (0: go ahead)."""
        return max(self._username_wait(username), self._address_wait(address))

    def record_failure(self, address: str | None) -> None:
        """Count a failed attempt from ``address`` (the username side lives in the audit log)."""
        if not address:
            return
        with self._lock:
            failures = self._address_failures.setdefault(address, deque())
            failures.append(time.monotonic())
            self._forget_old(failures)

    def _username_wait(self, username: str) -> float:
        policy = self.policy
        since = utcnow() - policy.window
        recent = db.session.execute(
            select(func.count(), func.max(AuditEntry.at))
            .where(AuditEntry.target_type == "user", AuditEntry.target_id == username,
                   AuditEntry.action == "login", AuditEntry.outcome == "failed", AuditEntry.at >= since)
        ).one()
        failures, last_failure = int(recent[0] or 0), recent[1]
        if failures < policy.free_failures or last_failure is None:
            return 0.0
        delay = min(policy.base_delay * 2 ** (failures - policy.free_failures), policy.max_delay)
        if last_failure.tzinfo is None:  # aggregate results bypass the column type on SQLite
            last_failure = last_failure.replace(tzinfo=utcnow().tzinfo)
        remaining = delay - (utcnow() - last_failure).total_seconds()
        return max(0.0, remaining)

    def _address_wait(self, address: str | None) -> float:
        if not address:
            return 0.0
        with self._lock:
            failures = self._address_failures.get(address)
            if not failures:
                return 0.0
            self._forget_old(failures)
            if len(failures) < self.policy.per_address_failures:
                return 0.0
            return max(0.0, failures[0] + self.policy.window.total_seconds() - time.monotonic())

    def _forget_old(self, failures: deque[float]) -> None:
        horizon = time.monotonic() - self.policy.window.total_seconds()
        while failures and failures[0] < horizon:
            failures.popleft()


def record_login(user_id: int) -> None:
    """Stamp the user's last login (the caller commits, with its audit entry)."""
    db.session.execute(db.update(User).where(User.id == user_id).values(last_login_at=utcnow()))


def end_all_sessions(user_id: int) -> None:
    """Bump the session generation: every session cookie issued to the user stops working."""
    db.session.execute(db.update(User).where(User.id == user_id)
                       .values(session_generation=User.session_generation + 1))
