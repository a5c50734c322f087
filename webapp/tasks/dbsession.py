"""What every engine writer needs from its session: the database clock and SQLite's write lock.

Times: on PostgreSQL the database clock (``statement_timestamp()``) is used for every
comparison and stamp, so a machine whose own clock is wrong can neither claim delayed work
early nor recover live work. SQLite is one machine by nature, so Python's clock is used there.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Interval, func, literal, type_coerce
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ..extensions import db
from .models import UTCDateTime, utcnow


class SessionWriter:
    """Base of the task service and the notification outbox (one session, one clock)."""

    def __init__(self, session: Session | None = None) -> None:
        self._session = session

    @property
    def session(self) -> Session:
        return self._session or db.session()

    @property
    def is_postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def now(self) -> ColumnElement[datetime]:
        """The current time as a SQL expression (database clock on PostgreSQL)."""
        if self.is_postgres:
            return func.statement_timestamp(type_=UTCDateTime())
        return literal(utcnow(), UTCDateTime())

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """``now() + seconds`` as a SQL expression."""
        if self.is_postgres:
            shifted = func.statement_timestamp() + literal(timedelta(seconds=seconds), Interval())
            return type_coerce(shifted, UTCDateTime())
        return literal(utcnow() + timedelta(seconds=seconds), UTCDateTime())

    def begin_write(self) -> None:
        """On SQLite, start the transaction with BEGIN IMMEDIATE so it can never fail to upgrade.

        A deferred SQLite transaction that read first and writes later can be refused with
        "database is locked" (busy snapshot) no matter how long it waits; taking the write lock
        up front makes it wait in line instead. PostgreSQL needs nothing.
        """
        session = self.session
        if session.in_transaction():
            return
        if session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})

    # The task service's historical names for the same helpers (bulk.py uses them too).
    _now = now
    _now_plus = now_plus
    _begin_write = begin_write
