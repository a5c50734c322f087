"""Where the login throttle keeps its counters: the database (always there), or Redis when configured.

Both stores count the same way: one counter per key in a fixed window; a bump past the window's
end starts a new window at 1; every bump is one atomic operation (an upsert, a Lua script), so
concurrent failures from many processes add up exactly. ``RedisCounters`` falls back to the
database for any call Redis does not answer: during an outage logins are still throttled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import case, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import LoginFailureCounter

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Counter:
    """A counter's value: failures in the window, when the window began, the last failure, its audit row."""

    failures: int
    window_started_at: datetime
    last_failure_at: datetime
    audit_id: int | None


class CounterStore(Protocol):
    """What the throttle needs of a store (every ``key`` is already a hash)."""

    def read(self, session: Session, keys: list[str], now: datetime, window: timedelta) -> dict[str, Counter]:
        """The counters of ``keys`` whose window is still open."""

    def bump(self, session: Session, scope: str, key: str, now: datetime, window: timedelta) -> Counter:
        """Add one (a new window at 1 when the old one is over); the new value."""

    def forget(self, session: Session, key: str) -> None:
        """Drop the counter."""

    def attach_audit_row(self, session: Session, key: str, audit_id: int) -> None:
        """Remember the audit row that reports this counter's window."""

    def prune(self, session: Session, older_than: datetime) -> None:
        """Drop counters whose last failure is older than ``older_than``."""


class DatabaseCounters:
    """Counters in ``login_failure_counter`` (migration 0007), written in the caller's transaction."""

    def read(self, session: Session, keys: list[str], now: datetime, window: timedelta) -> dict[str, Counter]:
        """The counters of ``keys`` whose window is still open."""
        rows = session.scalars(select(LoginFailureCounter).where(LoginFailureCounter.key.in_(keys)))
        return {row.key: Counter(row.failures, row.window_started_at, row.last_failure_at, row.audit_id)
                for row in rows if row.window_started_at >= now - window}

    def bump(self, session: Session, scope: str, key: str, now: datetime, window: timedelta) -> Counter:
        """One upsert: a new row at 1, a new window at 1, or one more in the current window."""
        table = LoginFailureCounter.__table__
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
        expired = table.c.window_started_at < now - window
        statement = insert.values(key=key, scope=scope, failures=1, window_started_at=now,
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
        return Counter(int(failures), started, now, audit_id)

    def forget(self, session: Session, key: str) -> None:
        """Drop the counter."""
        session.execute(delete(LoginFailureCounter).where(LoginFailureCounter.key == key))

    def attach_audit_row(self, session: Session, key: str, audit_id: int) -> None:
        """Remember the audit row that reports this counter's window."""
        row = session.get(LoginFailureCounter, key)
        if row is not None:
            row.audit_id = audit_id

    def prune(self, session: Session, older_than: datetime) -> None:
        """Old windows are of no use: keep the table as small as the current attacks."""
        session.execute(delete(LoginFailureCounter).where(LoginFailureCounter.last_failure_at < older_than))


# KEYS[1]: the counter's hash; ARGV: now and window (epoch seconds), expiry (whole seconds).
BUMP_SCRIPT = """
local started = tonumber(redis.call('HGET', KEYS[1], 'started'))
if (not started) or started < tonumber(ARGV[1]) - tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'failures', 1, 'started', ARGV[1], 'last', ARGV[1])
else
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  redis.call('HSET', KEYS[1], 'last', ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HMGET', KEYS[1], 'failures', 'started', 'audit_id')
"""
FIELDS = ("failures", "started", "last", "audit_id")


class RedisCounters:
    """Counters as Redis hashes that expire after two windows; the database when Redis does not answer."""

    def __init__(self, client: redis.Redis, prefix: str, fallback: CounterStore | None = None) -> None:
        # Imported here, not at the top: redis costs every process a large share of its start,
        # and only one with REDIS_URL set counts logins in Redis.
        from redis import RedisError

        self._errors: type[RedisError] = RedisError
        self.client = client
        self.prefix = f"{prefix}login:"
        self.fallback = fallback or DatabaseCounters()
        self._bump = client.register_script(BUMP_SCRIPT)

    def read(self, session: Session, keys: list[str], now: datetime, window: timedelta) -> dict[str, Counter]:
        """The counters of ``keys`` whose window is still open."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(self.prefix + key, *FIELDS)
            answers = pipe.execute()
        except self._errors as exc:
            self._unavailable(exc)
            return self.fallback.read(session, keys, now, window)
        found = {}
        for key, (failures, started, last, audit_id) in zip(keys, answers, strict=True):
            if failures is None or started is None:
                continue
            counter = Counter(int(failures), _time(started), _time(last or started), _number(audit_id))
            if counter.window_started_at >= now - window:
                found[key] = counter
        return found

    def bump(self, session: Session, scope: str, key: str, now: datetime, window: timedelta) -> Counter:
        """Add one in one script call."""
        seconds = window.total_seconds()
        try:
            failures, started, audit_id = self._bump(keys=[self.prefix + key],
                                                     args=[repr(now.timestamp()), repr(seconds),
                                                           int(seconds * 2) + 1])
        except self._errors as exc:
            self._unavailable(exc)
            return self.fallback.bump(session, scope, key, now, window)
        return Counter(int(failures), _time(started), now, _number(audit_id))

    def forget(self, session: Session, key: str) -> None:
        """Drop the counter."""
        try:
            self.client.delete(self.prefix + key)
        except self._errors as exc:
            self._unavailable(exc)
            self.fallback.forget(session, key)

    def attach_audit_row(self, session: Session, key: str, audit_id: int) -> None:
        """Remember the audit row that reports this counter's window."""
        try:
            if self.client.exists(self.prefix + key):
                self.client.hset(self.prefix + key, "audit_id", audit_id)
        except self._errors as exc:
            self._unavailable(exc)
            self.fallback.attach_audit_row(session, key, audit_id)

    def prune(self, session: Session, older_than: datetime) -> None:
        """Redis expires old counters itself; the fallback's rows from an outage are pruned."""
        self.fallback.prune(session, older_than)

    @staticmethod
    def _unavailable(exc: Exception) -> None:
        log.warning("login throttle: Redis did not answer (%s); counting in the database", exc)


def _time(value: Any) -> datetime:
    return datetime.fromtimestamp(float(value), UTC)


def _number(value: Any) -> int | None:
    return int(value) if value not in (None, b"", "") else None


def counter_store(redis_url: str | None, prefix: str) -> CounterStore:
    """Redis counters when ``REDIS_URL`` is set (database fallback), else the database's."""
    if not redis_url:
        return DatabaseCounters()
    from redis import Redis  # only when REDIS_URL is set (see RedisCounters)

    return RedisCounters(Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1), prefix)
