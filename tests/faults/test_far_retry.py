"""A RETRYING task scheduled an hour ahead is never treated as stuck.

Its first attempt fails and schedules the retry for ``next_run_at`` = now + 1 hour; then the
worker that ran it is killed (SIGKILL), so the task's last worker is dead, and the surviving
worker keeps sweeping every heartbeat with ``max-processing-time`` set to 1 s (the most eager
setting). Expected: sweeps run (the dead worker is declared DEAD, other tasks flow) but the
RETRYING task is left alone: status RETRYING, the same ``next_run_at``, no RECOVERED event,
recovery_count 0, started once; even direct sweeps with a 1 ms threshold return nothing for it.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask

from tests.faults.processors import FAR_RETRY_SECONDS, FAR_RETRY_TYPE
from tests.faults.support import (
    HEARTBEAT,
    assert_succeeded_exactly_once,
    count_where,
    event_kinds,
    first_start_by,
    submit,
    task_state,
    wait_for,
    wait_for_workers,
    worker_statuses,
)
from tests.proc_utils import ProcessPool, count_runs, read_run_log
from webapp.extensions import db
from webapp.tasks import AsyncTaskService

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.timeout(60)
def test_retrying_task_due_in_an_hour_survives_every_sweep(
        pg_app: Flask, pg_env: Callable[..., dict[str, str]], pool: ProcessPool, run_log: Path) -> None:
    env = pg_env(ASYNC_TASK_MAX_PROCESSING_TIME=1)
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(pg_app, pool, 2)
    [far] = submit(pg_app, 1, task_type=FAR_RETRY_TYPE)
    wait_for(pool, lambda: task_state(pg_app, far)["status"] == "RETRYING", timeout=10,
             message="the first attempt failed and scheduled its retry")
    scheduled = task_state(pg_app, far)
    ahead = (scheduled["next_run_at"] - datetime.now(UTC)).total_seconds()
    assert FAR_RETRY_SECONDS - 60 < ahead <= FAR_RETRY_SECONDS, ahead

    ran_it = pool.by_pid(first_start_by(run_log, lambda r: r.task_id == far).pid)
    ran_it.send(signal.SIGKILL)
    wait_for(pool, lambda: worker_statuses(pg_app).get(ran_it.pid) == "DEAD", timeout=15,
             message="the killed worker declared DEAD by a sweep")
    # Several more sweeps (one per heartbeat), with other tasks flowing past.
    others = submit(pg_app, 20, seconds=0.02)
    wait_for(pool, lambda: count_where(pg_app, others, "SUCCESS") == len(others), timeout=20,
             message="other tasks SUCCESS")
    time.sleep(8 * HEARTBEAT)
    with pg_app.app_context():
        for _ in range(3):
            assert far not in AsyncTaskService().recover_orphans(max_processing_time=0.001,
                                                                 heartbeat_interval=0.001)
        db.session.remove()

    state = task_state(pg_app, far)
    assert state["status"] == "RETRYING" and state["next_run_at"] == scheduled["next_run_at"], state
    assert (state["recovery_count"], state["retry_count"], state["attempts"]) == (0, 1, 1), state
    assert event_kinds(pg_app, far) == ["SUBMITTED", "CLAIMED", "RETRY_SCHEDULED"]
    assert count_runs(read_run_log(run_log), "start")[far] == 1
    assert_succeeded_exactly_once(pg_app, run_log, others)
    print(f"\nFIGURE far retry: RETRYING task due in {ahead:.0f}s untouched by every sweep after its "
          f"worker died (max-processing-time 1s)")
