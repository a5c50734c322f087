"""Issue 10 item 16: after ``pg_terminate_backend`` a consumer reconnects at once, with one line.

The dispatcher's claim connection dies under it. It used to log a traceback for the failed
claim and then wait for the next poll (here 30 s) before claiming again; now the next claim
reconnects straight away and the failure is one warning line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from flask import Flask
from sqlalchemy.exc import OperationalError

from tests.conftest import wait_until
from tests.faults.support import terminate_connections
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.consumer import Consumer

pytestmark = [pytest.mark.postgres]

POLL_INTERVAL = 30.0  # far longer than the test waits: only a prompt reconnect can pass


@contextmanager
def engine_log() -> Iterator[list[logging.LogRecord]]:
    """The engine's log records while the block runs (the app's logging setup replaces caplog's)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("webapp.tasks")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def submit(app: Flask) -> int:
    """Submit a NOOP; the test's own pooled connection may be one of those just killed: retry once."""
    for attempt in range(2):
        with app.app_context():
            try:
                return AsyncTaskService().submit_task("NOOP", {}).id
            except OperationalError:
                if attempt:
                    raise
            finally:
                db.session.remove()
    raise AssertionError("unreachable")


def status(app: Flask, task_id: int) -> str:
    with app.app_context():
        try:
            return AsyncTaskService().require_task(task_id).status
        finally:
            db.session.remove()


def test_a_killed_claim_connection_is_reopened_at_once(make_app: Callable[..., Flask], pg_url: str) -> None:
    app = make_app("postgres", ASYNC_TASK_PROCESSORS=["tests.processors"])
    consumer = Consumer(app, concurrency=1, poll_interval=POLL_INTERVAL, listen=False).start()
    first = submit(app)  # an in-process submit wakes the consumer directly
    wait_until(lambda: status(app, first) == "SUCCESS", timeout=10, message="first task")
    assert consumer._claim_direct is not None and consumer._claim_direct._connection is not None

    with engine_log() as records:
        assert terminate_connections(pg_url) > 0
        started = time.monotonic()
        second = submit(app)
        wait_until(lambda: status(app, second) == "SUCCESS", timeout=5,
                   message="a task submitted after the kill, well before the next poll")
        took = time.monotonic() - started
    claim_lines = [r for r in records if r.getMessage().startswith("claim")]
    assert len(claim_lines) == 1, [r.getMessage() for r in claim_lines]
    assert "reconnecting" in claim_lines[0].getMessage()
    assert claim_lines[0].exc_info is None  # one line, no traceback
    assert took < 5
