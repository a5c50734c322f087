"""An SMTP server that accepts connections and never answers, with real worker processes.

Expected: tasks whose creators get a mail finish as fast as tasks without one (mail goes out
on the notifier's own threads, never on the task threads); the sends hang until their timeout
and stay queued (none SENT); every task runs exactly once. The in-process version, with the
retry after the timeout, is tests/test_delivery.py::test_a_silent_smtp_server_does_not_slow_the_consumer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests.faults.support import (
    assert_succeeded_exactly_once,
    count_where,
    submit,
    wait_for,
    wait_for_workers,
)
from tests.proc_utils import ProcessPool
from tests.smtp_server import SilentServer
from webapp.extensions import db
from webapp.tasks.models import Notification

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

TASKS = 100
SEND_TIMEOUT = 3.0


def drain_seconds(app: Flask, pool: ProcessPool, created_by: str | None) -> tuple[list[int], float]:
    """Submit TASKS quick tasks and time how long until all are SUCCESS."""
    started = time.monotonic()
    ids = submit(app, TASKS, created_by=created_by, seconds=0.02)
    wait_for(pool, lambda: count_where(app, ids, "SUCCESS") == TASKS, timeout=60, interval=0.05,
             message=f"{TASKS} tasks SUCCESS")
    return ids, time.monotonic() - started


@pytest.mark.timeout(90)
def test_hanging_smtp_server_does_not_slow_the_tasks(pg_app: Flask, pg_env: Callable[..., dict[str, str]],
                                                    pool: ProcessPool, run_log: Path) -> None:
    silent = SilentServer().start()
    try:
        env = pg_env(MAIL_SERVER="127.0.0.1", MAIL_PORT=silent.port, MAIL_USE_TLS="false",
                     MAIL_DEFAULT_SENDER="tasks@example.com", ASYNC_TASK_NOTIFY_TIMEOUT=SEND_TIMEOUT,
                     ASYNC_TASK_SHUTDOWN_GRACE=1)
        pool.start_worker("a", env)
        pool.start_worker("b", env)
        wait_for_workers(pg_app, pool, 2)
        quiet, baseline = drain_seconds(pg_app, pool, created_by=None)
        mailed, with_mail = drain_seconds(pg_app, pool, created_by="ops@example.com")
        assert silent.accepted >= 1, "no mail was attempted"

        with pg_app.app_context():
            notes = dict(db.session.execute(select(Notification.status, func.count())
                                            .group_by(Notification.status)).all())
            db.session.remove()
        assert sum(notes.values()) == TASKS and "SENT" not in notes, notes
        # Had a task waited for its mail, 100 tasks on 8 threads would need 60 s or more.
        assert with_mail <= max(2 * baseline, baseline + 1.5), (
            f"tasks slowed by the hanging SMTP server: {with_mail:.2f}s vs {baseline:.2f}s without mail")
        assert_succeeded_exactly_once(pg_app, run_log, quiet + mailed)
        print(f"\nFIGURE hanging SMTP: {TASKS} tasks in {baseline:.2f}s without mail, {with_mail:.2f}s "
              f"with a mail each to a server that never answers ({silent.accepted} connection(s) "
              f"hanging, timeout {SEND_TIMEOUT:g}s); notifications {notes}")
    finally:
        pool.shutdown()  # before the server goes: no client may reconnect to its freed port
        silent.stop()
