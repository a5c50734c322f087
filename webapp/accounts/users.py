"""Console users: create them, check and change passwords, end their sessions.

Passwords are stored as werkzeug hashes (scrypt by default) and must pass the policy of
``passwords.py`` (12 characters, not a common password). Slowing down guessing is
``throttle.py``'s concern; checking a login attempt end to end is ``login.py``'s.
"""

from __future__ import annotations

import functools
import re
import secrets

from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..tasks.audit import record_audit
from ..tasks.errors import ValidationError
from ..tasks.models import utcnow
from .models import CLOCK_CHOICES, Role, User
from .passwords import validate_password

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,79}\Z")


@functools.cache
def _dummy_hash() -> str:
    """A hash to compare against when the username does not exist, so both answers take as long.

    Made on the first login attempt, not at import: scrypt costs every process (each ``flask``
    command, each web worker) a sixth of a second that only a login needs."""
    return generate_password_hash(secrets.token_hex(16))


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


def existing_usernames(names: set[str]) -> set[str]:
    """Which of ``names`` are usernames of existing users."""
    if not names:
        return set()
    return set(db.session.scalars(select(User.username).where(User.username.in_(sorted(names)))))


def list_users() -> list[User]:
    """Every console user, by username."""
    return list(db.session.scalars(select(User).order_by(User.username)))


def create_user(username: str, password: str, role: str, actor: str | None = None) -> User:
    """Create a user with a hashed password; the change is audited. Bad input writes nothing."""
    name = validate_username(username)
    role_value = validate_role(role)
    validate_password(password, name)
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


def set_time_zone(user_id: int, choice: str) -> User:
    """A user's own choice of clock for the console: ``local`` (their browser's zone) or ``utc``.

    A display preference, not a security matter: not audited.
    """
    value = (choice or "").strip().lower()
    if value not in CLOCK_CHOICES:
        raise ValidationError(f"time_zone must be one of {', '.join(CLOCK_CHOICES)}", field="time_zone")
    begin_write()
    user = db.session.get(User, user_id)
    if user is None:
        db.session.rollback()
        raise ValidationError("this account no longer exists", field="username")
    user.time_zone = value
    db.session.commit()
    return user


def change_own_password(user_id: int, current_password: str, new_password: str) -> User:
    """A user replaces their own password, proving the current one (audited).

    Every other session of the user ends (their cookies carry the old password's fingerprint).
    """
    begin_write()
    user = db.session.get(User, user_id)
    if user is None or not user.active:
        db.session.rollback()
        raise ValidationError("this account no longer exists or is disabled", field="username")
    if not check_password_hash(user.password_hash, current_password or ""):
        db.session.rollback()
        raise ValidationError("the current password is not correct", field="current_password")
    if check_password_hash(user.password_hash, new_password or ""):
        db.session.rollback()
        raise ValidationError("the new password must differ from the current one", field="password")
    _set_password(user, new_password, actor=user.username, action="user.password")
    return user


def reset_password(username: str, new_password: str, actor: str | None) -> User:
    """An admin (or the CLI) sets a user's password; the user's sessions end (audited)."""
    begin_write()
    user = _require_user(username)
    _set_password(user, new_password, actor=actor, action="user.password_reset")
    return user


def _set_password(user: User, new_password: str, actor: str | None, action: str) -> None:
    try:
        validate_password(new_password, user.username)
    except ValidationError:
        db.session.rollback()
        raise
    user.password_hash = generate_password_hash(new_password)
    user.session_generation = user.session_generation + 1
    record_audit(actor, action, "user", user.username)
    db.session.commit()


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
        check_password_hash(_dummy_hash(), password or "")
        return None
    if not check_password_hash(user.password_hash, password or "") or not user.active:
        return None
    return user


def generate_password() -> str:
    """A random password for generated accounts (about 120 bits)."""
    return secrets.token_urlsafe(15)


def record_login(user_id: int) -> None:
    """Stamp the user's last login (the caller commits, with its audit entry)."""
    db.session.execute(db.update(User).where(User.id == user_id).values(last_login_at=utcnow()))


def log_out_everywhere(user_id: int, username: str) -> None:
    """Bump the session generation: every session cookie issued to the user stops working (audited)."""
    begin_write()
    db.session.execute(db.update(User).where(User.id == user_id)
                       .values(session_generation=User.session_generation + 1))
    record_audit(username, "logout", "user", username)
    db.session.commit()
