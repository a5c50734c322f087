"""A pool liveness check on PostgreSQL that costs no round trip: is the idle socket silent?

SQLAlchemy's ``pool_pre_ping`` sends ``SELECT 1`` at every checkout, one round trip per
request (and per transaction) on a busy web worker. A pooled connection is idle: the server
has nothing to say on it. When PostgreSQL terminates it (``pg_terminate_backend``, a restart,
an idle timeout, PgBouncer closing it) the server's last message and the end of the stream
arrive on the socket, which then polls readable. So: at checkout, a connection whose socket
is readable, which is not idle, or which psycopg knows to be closed is thrown away, and the
pool hands out a new one (SQLAlchemy retries the checkout on ``DisconnectionError``).

This catches what ``pre_ping`` catches in practice: both miss a connection that dies between
the check and the statement, and both wait for TCP on a peer that vanished without a word.
A harmless unsolicited message (a parameter change report) only costs a reconnect.
"""

from __future__ import annotations

import select
from collections.abc import Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

# select.poll is what the check needs (select.select fails past 1,024 descriptors); where it is
# missing (Windows) the engine keeps SQLAlchemy's pre-ping.
SUPPORTED = hasattr(select, "poll")


def connection_looks_dead(dbapi_connection: Any) -> bool:
    """Whether an idle psycopg connection is closed, mid-transaction, or has unread input."""
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is None:  # not psycopg 3: nothing to judge, leave it to the statement
        return False
    if dbapi_connection.closed or pgconn.status != 0 or pgconn.transaction_status != 0:  # OK / IDLE
        return True
    poller = select.poll()
    try:
        poller.register(pgconn.socket, select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP)
    except Exception:  # no socket any more
        return True
    return bool(poller.poll(0))


def _check_on_checkout(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
    if connection_looks_dead(dbapi_connection):
        raise DisconnectionError("pooled connection was closed by the server while idle")


def install_liveness_check(engines: Mapping[Any, Engine]) -> None:
    """Add the checkout check to every PostgreSQL engine that does not pre-ping already."""
    for engine in engines.values():
        if engine.dialect.name == "postgresql" and not engine.pool._pre_ping:
            event.listen(engine, "checkout", _check_on_checkout)
