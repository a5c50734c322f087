"""A worker whose clock is 10 minutes ahead (libfaketime) next to a healthy worker.

Expected (PostgreSQL, where every time the engine compares or stamps on a lease is the
database's ``statement_timestamp()``): the fast-clock worker's recovery sweeps do not recover
the healthy worker's running task, neither as "stopped heartbeating" nor as "ran longer than
max-processing-time" (set to 5 minutes on the fast worker, less than its 10-minute skew); the
healthy worker is never declared dead; a task submitted with ``run_at`` = now + 5 minutes stays
PENDING, unclaimed, while the fast worker polls; and the fast worker itself processes tasks
normally. (SQLite is one machine by nature and uses Python's clock; not tested here.)

libfaketime 0.9.10 breaks ``time.sleep`` when the monotonic clock is left real
(``clock_nanosleep`` fails with EINVAL) and hangs timed waits when it is faked too, so the fast
worker keeps the real monotonic clock and gets a ``sitecustomize`` that sleeps on a timed
``Event.wait`` instead; its wall clock (``time.time``, ``datetime.now``) is 10 minutes ahead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask

from tests.faults.processors import CLOCK_TYPE
from tests.faults.support import (
    assert_succeeded_exactly_once,
    event_kinds,
    first_start_by,
    submit,
    task_state,
    wait_for,
    wait_for_workers,
    worker_statuses,
)
from tests.proc_utils import ProcessPool
from webapp.extensions import db
from webapp.tasks import AsyncTaskService

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEW_SECONDS = 600
SLEEP_SHIM = """import threading
import time


def _sleep(seconds):
    if seconds > 0:
        threading.Event().wait(seconds)


time.sleep = _sleep
"""

pytestmark = [
    pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis,
    pytest.mark.xfail(not LIBFAKETIME.exists(), run=False,
                      reason=f"libfaketime is not installed ({LIBFAKETIME}); apt-get install -y faketime"),
]


@pytest.mark.timeout(60)
def test_fast_clock_worker_neither_recovers_live_tasks_nor_claims_delayed_ones(
        pg_app: Flask, pg_env: Callable[..., dict[str, str]], pool: ProcessPool, run_log: Path,
        tmp_path: Path) -> None:
    healthy = pool.start_worker("healthy", pg_env(), concurrency=1)
    wait_for_workers(pg_app, pool, 1)
    [live] = submit(pg_app, 1, seconds=5, slow_attempts=[1])
    wait_for(pool, lambda: first_start_by(run_log, lambda r: r.task_id == live), timeout=10,
             message="the healthy worker's long task started")
    with pg_app.app_context():
        delayed = AsyncTaskService().submit_task(
            "PROC_RECORD", {}, run_at=datetime.now(UTC) + timedelta(minutes=5)).id
        db.session.remove()

    shim = tmp_path / "faketime-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SLEEP_SHIM)
    fast_env = pg_env(ASYNC_TASK_MAX_PROCESSING_TIME=300, LD_PRELOAD=str(LIBFAKETIME),
                      FAKETIME=f"+{SKEW_SECONDS // 60}m", FAKETIME_DONT_FAKE_MONOTONIC="1")
    fast_env["PYTHONPATH"] = f"{shim}:{fast_env['PYTHONPATH']}"
    fast = pool.start_worker("fast-clock", fast_env, concurrency=2)
    fast_started = time.monotonic()
    wait_for_workers(pg_app, pool, 2)
    # The healthy worker's only thread is busy, so the fast worker runs these.
    [clock] = submit(pg_app, 1, task_type=CLOCK_TYPE)
    quick = submit(pg_app, 10, seconds=0.05)
    wait_for(pool, lambda: task_state(pg_app, clock)["status"] == "SUCCESS", timeout=10,
             message="the clock task done")
    result = task_state(pg_app, clock)["result"]
    skew = result["worker_time"] - time.time()
    assert result["pid"] == fast.pid and skew > SKEW_SECONDS - 60, f"the clock is not faked: skew {skew:.0f}s"

    wait_for(pool, lambda: task_state(pg_app, live)["status"] == "SUCCESS", timeout=15,
             message="the long task finished by its own worker")
    live_state = task_state(pg_app, live)
    assert live_state["attempts"] == 1 and live_state["result"]["pid"] == healthy.pid, live_state
    assert "RECOVERED" not in event_kinds(pg_app, live), event_kinds(pg_app, live)
    assert worker_statuses(pg_app) == {healthy.pid: "RUNNING", fast.pid: "RUNNING"}
    assert "recovered" not in fast.log_text() and "declared dead" not in fast.log_text()

    delayed_state = task_state(pg_app, delayed)
    assert (delayed_state["status"], delayed_state["attempts"]) == ("PENDING", 0), delayed_state
    assert event_kinds(pg_app, delayed) == ["SUBMITTED"]
    wait_for(pool, lambda: all(task_state(pg_app, t)["status"] == "SUCCESS" for t in quick), timeout=10,
             message="the fast worker's quick tasks done")
    assert_succeeded_exactly_once(pg_app, run_log, [live, clock, *quick], writers=[live, *quick])
    print(f"\nFIGURE clock skew: fast worker {skew:.0f}s ahead swept and polled for "
          f"{time.monotonic() - fast_started:.1f}s: live task not recovered, delayed task not claimed")
