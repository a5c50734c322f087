"""SQLite: one machine, one write lock. The engine's writes as Core statements under BEGIN IMMEDIATE.

SQLite is one machine by nature, so Python's clock is the clock. A deferred transaction that
read first and writes later can be refused with "database is locked" however long it waits, so
every writer takes the write lock up front (``begin_write``) and waits in line instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Integer,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .dialect import Success, TaskWriter
from .direct import DirectConnection
from .fencing import attempt_key, fenced_update, stored_result
from .limit_models import TaskLimitStart
from .limits import ClaimLimit
from .models import AsyncTask, TaskStatus, UTCDateTime, utcnow
from .transitions import starting_statuses

Query = TypeVar("Query")

CLAIMABLE = starting_statuses("claim")

# What a claim returns: the columns a worker needs to run the attempt.
CLAIM_RETURNING = (
    AsyncTask.id,
    AsyncTask.task_type,
    AsyncTask.payload,
    AsyncTask.priority,
    AsyncTask.retry_count,
    AsyncTask.max_retry_count,
    AsyncTask.created_by,
    AsyncTask.created_at,
    AsyncTask.attempts,
    AsyncTask.claim_token,
    AsyncTask.retry_strategy,
    AsyncTask.retry_interval,
    AsyncTask.retry_max_delay,
    AsyncTask.retry_jitter,
    AsyncTask.notify_url,
    AsyncTask.workflow_id,
    AsyncTask.workflow_key,
)


class SqliteDialect:
    """SQLite's half of the engine's writes (see ``dialect.Dialect``)."""

    name = "sqlite"
    submits_in_one_statement = False
    samples_counts = False

    def now(self) -> ColumnElement[datetime]:
        """Python's clock, as a bound value."""
        return literal(utcnow(), UTCDateTime())

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """Python's clock plus ``seconds``, as a bound value."""
        return literal(utcnow() + timedelta(seconds=seconds), UTCDateTime())

    def begin_write(self, session: Session) -> None:
        """Start the transaction with BEGIN IMMEDIATE (see ``engine._tune_sqlite``)."""
        session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})

    def db_now(self, session: Session, engine_state: Callable[[], Any]) -> datetime:
        """Python's clock: the database runs on this machine."""
        return utcnow()

    def skip_locked(self, query: Query, **options: Any) -> Query:
        """Unchanged: one writer at a time holds the whole database."""
        return query

    def whole_minutes_since(self, column: Any, start: datetime) -> ColumnElement[int]:
        """Whole minutes from ``start`` (on a minute boundary) to ``column``, computed in the database.

        SQLite stores naive UTC text. Whole seconds (not julianday's float days, which round a
        time on the minute to 59.999...) divided as integers.
        """
        seconds_since = (cast(func.strftime("%s", column), Integer)
                         - cast(func.strftime("%s", literal(start, UTCDateTime())), Integer))
        return cast(seconds_since // 60, Integer)

    def wake_consumers(self, session: Session) -> None:
        """Nothing to send: other processes notice the commit themselves (``data_version``)."""

    def submit_in_one_statement(self, connection: Connection, row: dict[str, Any]) -> int:
        """Not offered (``submits_in_one_statement`` is False): a submit takes the ORM path."""
        raise NotImplementedError("SQLite submits through the session (BEGIN IMMEDIATE)")

    resolves_in_succeed = False

    def succeed_resolving(self, writer: TaskWriter, successes: Sequence[Success], worker_id: str | None
                          ) -> Any:
        """Not offered (``resolves_in_succeed`` is False): workflows resolve statement by statement."""
        raise NotImplementedError("SQLite resolves workflows after the success statement")

    def insert_tasks(self, writer: TaskWriter, rows: list[dict[str, Any]]) -> list[int]:
        """One multi-row INSERT … RETURNING in input order, then the SUBMITTED events."""
        ids = list(writer.session.execute(
            insert(AsyncTask).returning(AsyncTask.id, sort_by_parameter_order=True), rows).scalars())
        writer.write_events([writer.transition_event("submit", task_id, actor=row.get("principal"))
                             for task_id, row in zip(ids, rows, strict=True)])
        return ids

    def claim(self, writer: TaskWriter, worker_id: str, limit: int, types: list[str], token: str,
              direct: DirectConnection | None) -> Sequence[Any]:
        """Look first, then ``UPDATE … WHERE id IN (due, ordered, limited) RETURNING`` under the lock."""
        session = writer.session
        if not _anything_due(session, types):
            return []
        writer.begin_write()
        now = utcnow()
        due = (
            select(AsyncTask.id)
            .where(AsyncTask.status.in_(CLAIMABLE), AsyncTask.next_run_at <= literal(now, UTCDateTime()),
                   AsyncTask.task_type.in_(types), not_past_start_by(literal(now, UTCDateTime())))
            .order_by(AsyncTask.priority.desc(), AsyncTask.next_run_at, AsyncTask.id)
            .limit(limit)
        )
        return stamp_claim(writer, AsyncTask.id.in_(due.scalar_subquery()), worker_id, token, now)

    def lock_unique(self, session: Session, key: str) -> None:
        """Nothing: the submit already holds the database's one write lock (BEGIN IMMEDIATE)."""

    def payload_field_equals(self, field: str, value: Any) -> ColumnElement[bool]:
        """``json_extract(payload, '$.field') IS value`` (objects and arrays compared as minified JSON)."""
        stored = func.json_extract(AsyncTask.payload, f"$.{field}")
        if isinstance(value, dict | list):
            return stored == func.json(json.dumps(value))
        return stored.op("IS")(literal(value))

    def claim_limited(self, writer: TaskWriter, worker_id: str, limit: int, types: list[str],
                      limited: Sequence[ClaimLimit], token: str, direct: DirectConnection | None
                      ) -> Sequence[Any]:
        """The limited claim under the write lock: pick what the limits allow, stamp it, log rate starts.

        The same rules as PostgreSQL's ``CLAIM_LIMITED_SQL`` (see there); the database's one
        write lock makes the count and the claim one atomic step.
        """
        session = writer.session
        if not _anything_due(session, types):
            return []
        writer.begin_write()
        now = utcnow()
        statement, params = limited_claim_select(limited, types, now, limit)
        allowed = session.execute(statement, params).all()
        if not allowed:
            return []
        rows = stamp_claim(writer, AsyncTask.id.in_([a.id for a in allowed]), worker_id, token, now)
        claimed = {r.id for r in rows}
        starts = [{"task_type": a.task_type, "rate_key": a.rkey, "started_at": now}
                  for a in allowed if a.rate_count is not None and a.id in claimed]
        if starts:
            session.execute(insert(TaskLimitStart), starts)
        for item in limited:
            if item.rate_per is not None:
                session.execute(delete(TaskLimitStart).where(
                    TaskLimitStart.task_type == item.task_type,
                    TaskLimitStart.started_at < now - timedelta(seconds=item.rate_per)))
        return rows

    def succeed(self, writer: TaskWriter, successes: Sequence[Success], worker_id: str | None
                ) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
        """One fenced UPDATE per attempt (SQLite has no arrays to unnest), then the events."""
        won: set[tuple[int, str]] = set()
        too_late: set[tuple[int, str]] = set()
        now = writer.now()
        for item in successes:
            changed = writer.session.execute(
                fenced_update(item.task.id, item.task.claim_token)
                .values(status=TaskStatus.SUCCESS.value, result=stored_result(item.result.data),
                        error=None, finished_at=now, updated_at=now, claim_token=None)
                .returning(AsyncTask.cancel_requested_at)
            ).first()
            if changed is not None:
                won.add(attempt_key(item.task))
                if changed.cancel_requested_at is not None:
                    too_late.add(attempt_key(item.task))
        writer.write_events([
            writer.transition_event("succeed", item.task.id, attempt=item.task.attempt, worker_id=worker_id)
            for item in successes if attempt_key(item.task) in won])
        return won, too_late


def _anything_due(session: Session, types: list[str]) -> bool:
    """Look before taking the database's only write lock (then end the read).

    Idle consumers polling an empty queue must not queue up behind each other and the web
    process's writes.
    """
    anything_due = session.execute(
        select(AsyncTask.id)
        .where(AsyncTask.status.in_(CLAIMABLE), AsyncTask.next_run_at <= literal(utcnow(), UTCDateTime()),
               AsyncTask.task_type.in_(types))
        .limit(1)
    ).first()
    session.rollback()
    return anything_due is not None


def not_past_start_by(now: ColumnElement[datetime]) -> ColumnElement[bool]:
    """A task without a start deadline, or whose deadline is still ahead: it may start."""
    return or_(AsyncTask.start_by.is_(None), AsyncTask.start_by > now)


def stamp_claim(writer: TaskWriter, chosen: ColumnElement[bool], worker_id: str, token: str,
                now: datetime) -> Sequence[Any]:
    """Move the ``chosen`` waiting tasks to PROCESSING under ``token``, with their CLAIMED events.

    One time for the start, the event and a rate window's start log: the event log must agree
    with what the limits counted.
    """
    at = literal(now, UTCDateTime())
    rows = writer.session.execute(
        update(AsyncTask)
        .where(chosen, AsyncTask.status.in_(CLAIMABLE))
        .values(status=TaskStatus.PROCESSING.value, claim_token=token, worker_id=worker_id,
                started_at=at, updated_at=at, attempts=AsyncTask.attempts + 1,
                progress=None, progress_message=None)
        .returning(*CLAIM_RETURNING)
        .execution_options(synchronize_session=False)
    ).all()
    writer.write_events([writer.transition_event("claim", r.id, attempt=r.attempts, worker_id=worker_id, at=now)
                         for r in rows])
    return rows


def _payload_key(key_column: str) -> str:
    """A payload field named by ``lim.<key_column>`` as text, '' when absent (PostgreSQL's ``->>``)."""
    return (f"substr(COALESCE(CAST(json_extract(t.payload, '$.' || l.{key_column}) AS TEXT), ''), 1, 200)")


def limited_claim_select(limited: Sequence[ClaimLimit], types: list[str], now: datetime, limit: int
                         ) -> tuple[Any, dict[str, Any]]:
    """The ids the limits let start, in claim order (see ``dialect_postgres.CLAIM_LIMITED_SQL``)."""
    rows: list[str] = []
    params: dict[str, Any] = {}
    for n, item in enumerate(limited):
        rows.append(f"(:t{n}, :c{n}, :ck{n}, :r{n}, :rk{n}, :w{n})")
        window = now - timedelta(seconds=item.rate_per or 0)
        params.update({f"t{n}": item.task_type, f"c{n}": item.concurrency, f"ck{n}": item.concurrency_key,
                       f"r{n}": item.rate_count, f"rk{n}": item.rate_key, f"w{n}": window})
    sql = f"""
WITH lim(task_type, concurrency, concurrency_key, rate_count, rate_key, window_start) AS (
    VALUES {', '.join(rows)}
), running AS (
    SELECT t.task_type, {_payload_key('concurrency_key')} AS ckey, count(*) AS n
    FROM lim AS l JOIN async_task AS t ON t.task_type = l.task_type AND t.status = 'PROCESSING'
    WHERE l.concurrency IS NOT NULL GROUP BY 1, 2
), recent AS (
    SELECT s.task_type, s.rate_key AS rkey, count(*) AS n
    FROM lim AS l JOIN task_limit_start AS s ON s.task_type = l.task_type AND s.started_at > l.window_start
    WHERE l.rate_count IS NOT NULL GROUP BY 1, 2
), candidates AS (
    SELECT c.* FROM (
        SELECT t.id, t.task_type, t.priority, t.next_run_at, l.concurrency, l.rate_count,
               {_payload_key('concurrency_key')} AS ckey, {_payload_key('rate_key')} AS rkey
        FROM async_task AS t LEFT JOIN lim AS l ON l.task_type = t.task_type
        WHERE t.status IN ('PENDING', 'RETRYING') AND t.next_run_at <= :now AND t.task_type IN :types
          AND (t.start_by IS NULL OR t.start_by > :now)
    ) AS c
    WHERE NOT EXISTS (SELECT 1 FROM running AS r
                      WHERE r.task_type = c.task_type AND r.ckey = c.ckey AND r.n >= c.concurrency)
      AND NOT EXISTS (SELECT 1 FROM recent AS w
                      WHERE w.task_type = c.task_type AND w.rkey = c.rkey AND w.n >= c.rate_count)
    ORDER BY c.priority DESC, c.next_run_at, c.id
    LIMIT :scan
)
SELECT c.id, c.task_type, c.rkey, c.rate_count FROM (
    SELECT c.*,
           row_number() OVER (PARTITION BY c.task_type, c.ckey ORDER BY c.priority DESC, c.next_run_at, c.id) AS crank,
           row_number() OVER (PARTITION BY c.task_type, c.rkey ORDER BY c.priority DESC, c.next_run_at, c.id) AS rrank
    FROM candidates AS c) AS c
LEFT JOIN running AS r ON r.task_type = c.task_type AND r.ckey = c.ckey
LEFT JOIN recent AS w ON w.task_type = c.task_type AND w.rkey = c.rkey
WHERE (c.concurrency IS NULL OR COALESCE(r.n, 0) + c.crank <= c.concurrency)
  AND (c.rate_count IS NULL OR COALESCE(w.n, 0) + c.rrank <= c.rate_count)
ORDER BY c.priority DESC, c.next_run_at, c.id
LIMIT :limit
"""
    statement = text(sql).bindparams(
        bindparam("types", expanding=True), bindparam("now", type_=UTCDateTime()),
        *(bindparam(f"w{n}", type_=UTCDateTime()) for n in range(len(limited))))
    params.update({"types": types, "now": now, "scan": max(200, 20 * limit), "limit": limit})
    return statement, params


SQLITE = SqliteDialect()
