"""Console users (password login, roles) and API bearer tokens (stored hashed)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..tasks.models import UTCDateTime, utcnow


class Role(enum.StrEnum):
    """viewer reads; operator also cancels and retries; admin also manages users and tokens."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


ROLE_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}

# How the console shows times to a user: in the browser's own zone ("local") or in UTC.
CLOCK_LOCAL = "local"
CLOCK_UTC = "utc"
CLOCK_CHOICES = (CLOCK_LOCAL, CLOCK_UTC)


class User(db.Model):  # type: ignore[name-defined,misc]
    """A console login."""

    __tablename__ = "console_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False, default=Role.VIEWER.value)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Signed-cookie sessions cannot be revoked one by one: a session carries the generation it
    # was issued under, and logging out bumps it, ending every copy of the user's sessions.
    session_generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0,
                                                    server_default="0")
    # The console's one clock for this user: CLOCK_LOCAL or CLOCK_UTC (migration 0012).
    time_zone: Mapped[str] = mapped_column(String(8), nullable=False, default=CLOCK_LOCAL,
                                           server_default=CLOCK_LOCAL)

    def has_role(self, role: Role | str) -> bool:
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[Role(role)]


class LoginFailureCounter(db.Model):  # type: ignore[name-defined,misc]
    """Failed (or throttled) logins of one key in the current window, seen by every process.

    ``key`` is a SHA-256 of the scope and its values (an address, a username, or both), so a
    password typed into the username box is never stored readable. ``audit_id`` is the audit
    row that counts this window's throttled attempts (one row per address per window).
    """

    __tablename__ = "login_failure_counter"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(16), nullable=False)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    window_started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    audit_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ApiToken(db.Model):  # type: ignore[name-defined,misc]
    """A bearer token for applications; only its SHA-256 is stored."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What the token may do (comma-separated: submit, read, operate) and over which tasks (own:
    # those it submitted; all). Tokens from before migration 0006 keep everything, as they had.
    scopes: Mapped[str] = mapped_column(String(64), nullable=False, default="submit,read,operate",
                                        server_default="submit,read,operate")
    reach: Mapped[str] = mapped_column(String(8), nullable=False, default="own", server_default="all")
    # Mail recipients the token may name (comma-separated domains and exact addresses; None: any)
    # and notifications its tasks may send per hour (None: no limit).
    allowed_recipients: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    notifications_per_hour: Mapped[int | None] = mapped_column(Integer, nullable=True)
