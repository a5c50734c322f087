"""Slowing down password guessing, with counters every process sees (table ``login_failure_counter``).

Three counters per failed login, each in a fixed window (15 minutes by default):

* per **user and address**: after ``free_failures`` the next try from that address must wait
  ``base_delay * 2 ** extra`` seconds (capped), so one address guesses one password a minute
  at best; the user's own address, elsewhere, is not affected;
* per **address**, across usernames: ``per_address_failures``, then that address waits for the
  window's end (password spraying);
* per **user**, across addresses: ``per_user_failures``, set high (100) so that no one address,
  held back by the first counter, can reach it and lock the user out; it still stops a guessing
  run spread over many addresses.

Throttled attempts are counted too (``record_throttled``), per address, so the audit log gets
one row per address per window with a count instead of a row per refused request.

The counters are upserts (``INSERT … ON CONFLICT DO UPDATE … RETURNING``) on both PostgreSQL and
SQLite: concurrent failures from many gunicorn workers add up exactly.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..tasks.models import utcnow
from .models import LoginFailureCounter

MAX_KEY_TEXT = 255  # longer usernames/addresses are cut before hashing, like the audit columns


class Scope(enum.StrEnum):
    """What a counter counts."""

    USER_ADDRESS = "user+address"
    ADDRESS = "address"
    USER = "user"
    THROTTLED = "throttled"


@dataclass(frozen=True)
class LoginPolicy:
    """How failed logins are slowed down (see the module's docstring)."""

    free_failures: int = 5
    window: timedelta = timedelta(minutes=15)
    base_delay: float = 30.0
    max_delay: float = 900.0
    per_address_failures: int = 30
    per_user_failures: int = 100


@dataclass(frozen=True)
class Count:
    """A counter's value after an update: failures in the window, and when the window began."""

    failures: int
    window_started_at: datetime
    audit_id: int | None


def counter_key(scope: Scope, *values: str | None) -> str:
    """The counter's primary key: a SHA-256 of the scope and its values (never the text itself)."""
    text = "\x00".join([scope.value, *((value or "")[:MAX_KEY_TEXT] for value in values)])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class LoginThrottle:
    """Decides whether a login attempt may be checked now, and counts failures; writes only to ``session``.

    The caller owns the transaction (the login service commits the counters with the audit row).
    """

    def __init__(self, policy: LoginPolicy | None = None) -> None:
        self.policy = policy or LoginPolicy()

    def wait_seconds(self, session: Session, username: str, address: str | None) -> float:
        """Seconds until this username from this address may try again (0: go ahead)."""
        now = utcnow()
        counts = self._read(session, {
            Scope.USER_ADDRESS: counter_key(Scope.USER_ADDRESS, username, address),
            Scope.ADDRESS: counter_key(Scope.ADDRESS, address) if address else None,
            Scope.USER: counter_key(Scope.USER, username),
        }, now)
        waits = [0.0]
        pair = counts.get(Scope.USER_ADDRESS)
        if pair is not None and pair.failures >= self.policy.free_failures:
            delay = min(self.policy.base_delay * 2 ** (pair.failures - self.policy.free_failures),
                        self.policy.max_delay)
            waits.append(delay - (now - pair.last_failure_at).total_seconds())
        for scope, limit in ((Scope.ADDRESS, self.policy.per_address_failures),
                             (Scope.USER, self.policy.per_user_failures)):
            row = counts.get(scope)
            if row is not None and row.failures >= limit:
                waits.append((row.window_started_at + self.policy.window - now).total_seconds())
        return max(0.0, *waits)

    def record_failure(self, session: Session, username: str, address: str | None) -> None:
        """Count a failed password check for the user, the address, and the pair."""
        now = utcnow()
        self._bump(session, Scope.USER_ADDRESS, counter_key(Scope.USER_ADDRESS, username, address), now)
        self._bump(session, Scope.USER, counter_key(Scope.USER, username), now)
        if address:
            self._bump(session, Scope.ADDRESS, counter_key(Scope.ADDRESS, address), now)
        # Old windows are of no use: keep the table as small as the current attacks.
        session.execute(delete(LoginFailureCounter)
                        .where(LoginFailureCounter.last_failure_at < now - 2 * self.policy.window))

    def record_success(self, session: Session, username: str, address: str | None) -> None:
        """A correct password from this address: its own earlier typos are forgiven."""
        session.execute(delete(LoginFailureCounter).where(
            LoginFailureCounter.key == counter_key(Scope.USER_ADDRESS, username, address)))

    def record_throttled(self, session: Session, address: str | None) -> Count:
        """Count a refused (throttled) attempt from ``address`` in this window."""
        return self._bump(session, Scope.THROTTLED, counter_key(Scope.THROTTLED, address), utcnow())

    def attach_audit_row(self, session: Session, address: str | None, audit_id: int) -> None:
        """Remember the audit row that counts this window's throttled attempts of ``address``."""
        row = session.get(LoginFailureCounter, counter_key(Scope.THROTTLED, address))
        if row is not None:
            row.audit_id = audit_id

    def _read(self, session: Session, keys: dict[Scope, str | None],
              now: datetime) -> dict[Scope, LoginFailureCounter]:
        wanted = {key: scope for scope, key in keys.items() if key is not None}
        rows = session.scalars(select(LoginFailureCounter).where(LoginFailureCounter.key.in_(wanted)))
        horizon = now - self.policy.window
        return {wanted[row.key]: row for row in rows if row.window_started_at >= horizon}

    def _bump(self, session: Session, scope: Scope, key: str, now: datetime) -> Count:
        """Add one to the counter, starting a new window when the old one is over (one statement)."""
        table = LoginFailureCounter.__table__
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        expired = table.c.window_started_at < now - self.policy.window
        statement = insert.values(key=key, scope=scope.value, failures=1, window_started_at=now,
                                  last_failure_at=now).on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "failures": case((expired, 1), else_=table.c.failures + 1),
                "window_started_at": case((expired, now), else_=table.c.window_started_at),
                "audit_id": case((expired, None), else_=table.c.audit_id),
                "last_failure_at": now,
            },
        ).returning(table.c.failures, table.c.window_started_at, table.c.audit_id)
        failures, started, audit_id = session.execute(statement).one()
        return Count(int(failures), started, audit_id)
