"""SQLite: one machine, one write lock. The engine's writes as Core statements under BEGIN IMMEDIATE.

SQLite is one machine by nature, so Python's clock is the clock. A deferred transaction that
read first and writes later can be refused with "database is locked" however long it waits, so
every writer takes the write lock up front (``begin_write``) and waits in line instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Integer, cast, func, insert, literal, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .dialect import Success, TaskWriter
from .direct import DirectConnection
from .fencing import attempt_key, fenced_update, stored_result
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
        # Look before taking the database's only write lock: idle consumers polling an empty
        # queue must not queue up behind each other and the web process's writes.
        anything_due = session.execute(
            select(AsyncTask.id)
            .where(AsyncTask.status.in_(CLAIMABLE), AsyncTask.next_run_at <= literal(utcnow(), UTCDateTime()),
                   AsyncTask.task_type.in_(types))
            .limit(1)
        ).first()
        session.rollback()
        if anything_due is None:
            return []
        writer.begin_write()
        now = writer.now()
        due = (
            select(AsyncTask.id)
            .where(AsyncTask.status.in_(CLAIMABLE), AsyncTask.next_run_at <= now,
                   AsyncTask.task_type.in_(types))
            .order_by(AsyncTask.priority.desc(), AsyncTask.next_run_at, AsyncTask.id)
            .limit(limit)
        )
        rows = session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(due.scalar_subquery()), AsyncTask.status.in_(CLAIMABLE))
            .values(status=TaskStatus.PROCESSING.value, claim_token=token, worker_id=worker_id,
                    started_at=now, updated_at=now, attempts=AsyncTask.attempts + 1,
                    progress=None, progress_message=None)
            .returning(*CLAIM_RETURNING)
            .execution_options(synchronize_session=False)
        ).all()
        writer.write_events([writer.transition_event("claim", r.id, attempt=r.attempts, worker_id=worker_id)
                             for r in rows])
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


SQLITE = SqliteDialect()
