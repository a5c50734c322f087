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

The counters live in the database (``login_failure_counter``), or in Redis when ``REDIS_URL`` is
set (``login_counters.py``); either way every gunicorn worker and web host sees the same ones.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session

from ..tasks.models import utcnow
from .login_counters import Counter, CounterStore, DatabaseCounters

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


def counter_key(scope: Scope, *values: str | None) -> str:
    """The counter's primary key: a SHA-256 of the scope and its values (never the text itself)."""
    text = "\x00".join([scope.value, *((value or "")[:MAX_KEY_TEXT] for value in values)])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class LoginThrottle:
    """Decides whether a login attempt may be checked now, and counts failures.

    Counters live in ``store`` (``login_counters``: the database, or Redis when configured).
    The caller owns the transaction (the login service commits the counters with the audit row).
    """

    def __init__(self, policy: LoginPolicy | None = None, store: CounterStore | None = None) -> None:
        self.policy = policy or LoginPolicy()
        self.store = store or DatabaseCounters()

    def wait_seconds(self, session: Session, username: str, address: str | None) -> float:
        """Seconds until this username from this address may try again (0: go ahead)."""
        now = utcnow()
        keys = {Scope.USER_ADDRESS: counter_key(Scope.USER_ADDRESS, username, address),
                Scope.USER: counter_key(Scope.USER, username)}
        if address:
            keys[Scope.ADDRESS] = counter_key(Scope.ADDRESS, address)
        found = self.store.read(session, list(keys.values()), now, self.policy.window)
        counts = {scope: found[key] for scope, key in keys.items() if key in found}
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
        now, window = utcnow(), self.policy.window
        self.store.bump(session, Scope.USER_ADDRESS, counter_key(Scope.USER_ADDRESS, username, address), now, window)
        self.store.bump(session, Scope.USER, counter_key(Scope.USER, username), now, window)
        if address:
            self.store.bump(session, Scope.ADDRESS, counter_key(Scope.ADDRESS, address), now, window)
        self.store.prune(session, now - 2 * window)

    def record_success(self, session: Session, username: str, address: str | None) -> None:
        """A correct password from this address: its own earlier typos are forgiven."""
        self.store.forget(session, counter_key(Scope.USER_ADDRESS, username, address))

    def record_throttled(self, session: Session, address: str | None) -> Counter:
        """Count a refused (throttled) attempt from ``address`` in this window."""
        return self.store.bump(session, Scope.THROTTLED, counter_key(Scope.THROTTLED, address), utcnow(),
                               self.policy.window)

    def attach_audit_row(self, session: Session, address: str | None, audit_id: int) -> None:
        """Remember the audit row that counts this window's throttled attempts of ``address``."""
        self.store.attach_audit_row(session, counter_key(Scope.THROTTLED, address), audit_id)
