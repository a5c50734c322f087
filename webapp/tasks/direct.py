"""A consumer's own PostgreSQL connection for its two hottest statements.

The claim and a batch of successes are each a single statement. Through the pooled session,
each costs four round trips (the pool's liveness ping, BEGIN, the statement, COMMIT); run in
autocommit on a connection the thread keeps open, each costs one. One connection per thread
(the dispatcher's for claims, the finisher's for successes); a broken one is dropped and the
next call reconnects. Nothing else goes through here, so the connection can carry a setting
the claim needs (``enable_sort = off``, see ``AsyncTaskService.claim_due_tasks``).

``is_lost_connection`` tells a dead connection (``pg_terminate_backend``, a restart) from other
errors, so the engine's loops reconnect with one log line instead of a traceback.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

_NAMED_PARAMETER = re.compile(r"(?<![:\w]):(\w+)")


def pyformat(sql: str) -> str:
    """SQLAlchemy-style ``:name`` parameters as psycopg's ``%(name)s``."""
    return _NAMED_PARAMETER.sub(r"%(\1)s", sql)


class DirectConnection:
    """An autocommit psycopg connection, opened on first use and reopened after a failure."""

    def __init__(self, url: URL, *, durable: bool = True) -> None:
        threshold = url.query.get("prepare_threshold")
        self._prepare_threshold: int | None = 5
        if isinstance(threshold, str):
            self._prepare_threshold = None if threshold.lower() in ("none", "off", "") else int(threshold)
        plain = url.difference_update_query(["prepare_threshold"]).set(drivername="postgresql")
        self._conninfo = plain.render_as_string(hide_password=False)
        self._connection: psycopg.Connection[Any] | None = None
        self._durable = durable

    def execute_after(self, first: str, second: str, params: dict[str, Any]) -> list[Any]:
        """Two statements in one transaction sent as one pipeline (one round trip); the second's rows.

        Under READ COMMITTED each statement takes its own snapshot, so whatever the first waits
        for (the limited claim's advisory locks) is over before the second reads anything.
        """
        connection = self._connect()
        try:
            with connection.pipeline(), connection.transaction():
                connection.execute(first, params, prepare=None)
                cursor = connection.execute(second, params, prepare=None)
            return cursor.fetchall()
        except _psycopg().OperationalError:
            self.close()
            raise

    def execute(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """Run one statement (committed by itself) and return its rows."""
        connection = self._connect()
        try:
            return connection.execute(sql, params, prepare=None).fetchall()
        except _psycopg().OperationalError:
            self.close()  # the next call reconnects; this one's caller retries at its next turn
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed:
            psycopg = _psycopg()
            connection = psycopg.connect(self._conninfo, autocommit=True,
                                         row_factory=psycopg.rows.namedtuple_row)
            connection.prepare_threshold = self._prepare_threshold
            connection.execute("SET enable_sort = off")
            if not self._durable:
                connection.execute("SET synchronous_commit = off")
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:  # closing a broken connection may fail too; nothing to keep
                log.debug("closing a direct connection failed", exc_info=True)
            self._connection = None


def _psycopg() -> Any:
    """psycopg, imported on first use: PostgreSQL only, and a SQLite process never pays for it."""
    import psycopg
    import psycopg.rows

    return psycopg


def is_lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` means the database connection died (``pg_terminate_backend``, a restart)."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # A psycopg error can only exist once psycopg is imported; without it, nothing to look for.
    psycopg = sys.modules.get("psycopg")
    lost = () if psycopg is None else psycopg.OperationalError
    return isinstance(exc, lost) or (isinstance(exc, DBAPIError) and isinstance(exc.orig, lost))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (driver errors run over several)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
