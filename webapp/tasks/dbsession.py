"""What every engine writer needs from its session: its database's dialect, clock and write lock.

Times: on PostgreSQL the database clock (``statement_timestamp()``) is used for every
comparison and stamp, so a machine whose own clock is wrong can neither claim delayed work
early nor recover live work. SQLite is one machine by nature, so Python's clock is used there.
Each difference lives in its dialect module (``dialect_postgres``, ``dialect_sqlite``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ..extensions import db
from .dialect import Dialect
from .dialect_postgres import POSTGRES
from .dialect_sqlite import SQLITE

Query = TypeVar("Query")

DIALECTS: dict[str, Dialect] = {POSTGRES.name: POSTGRES, SQLITE.name: SQLITE}


def dialect_of(session: Session) -> Dialect:
    """The dialect of the database ``session`` is bound to."""
    return DIALECTS[session.get_bind().dialect.name]


class SessionWriter:
    """Base of the task engine's writers and the notification outbox (one session, one clock)."""

    def __init__(self, session: Session | None = None) -> None:
        self._session = session

    @property
    def session(self) -> Session:
        return self._session or db.session()

    @property
    def dialect(self) -> Dialect:
        """What differs between the databases, for the one this session uses."""
        return dialect_of(self.session)

    @property
    def is_postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def now(self) -> ColumnElement[datetime]:
        """The current time as a SQL expression (database clock on PostgreSQL)."""
        return self.dialect.now()

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """``now() + seconds`` as a SQL expression."""
        return self.dialect.now_plus(seconds)

    def skip_locked(self, query: Query, **options: Any) -> Query:
        """``query`` passing over rows other transactions hold, where the database can (PostgreSQL)."""
        return self.dialect.skip_locked(query, **options)

    def begin_write(self) -> None:
        """On SQLite, start the transaction with BEGIN IMMEDIATE so it can never fail to upgrade.

        A deferred SQLite transaction that read first and writes later can be refused with
        "database is locked" (busy snapshot) no matter how long it waits; taking the write lock
        up front makes it wait in line instead. PostgreSQL needs nothing.
        """
        session = self.session
        if not session.in_transaction():
            self.dialect.begin_write(session)
