"""A failing attempt whose database connection died before its rollback (found by the chaos run).

In tests/faults/test_chaos.py a ``pg_terminate_backend`` landed while a processor that had
written a row was failing: the consumer's rollback of the attempt raised on the dead
connection, the error left the worker thread before the outcome was written, and the task
stayed PROCESSING under a live, heartbeating worker (never recovered, never given back) until
``max-processing-time``. Here the processor terminates its own connection on attempt 1 and
then fails, every time. Expected: the attempt is failed (or given back) and retried, its row
rolled back, and the task ends SUCCESS on a later attempt within seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.chaos_processors import LOST_CONNECTION_TYPE, RUN_DIR_ENV
from tests.faults.support import (
    committed_runs,
    event_kinds,
    submit,
    task_state,
    wait_for,
    wait_for_workers,
)
from tests.proc_utils import ProcessPool

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.timeout(90)
def test_failing_attempt_whose_connection_died_is_retried_not_stuck(
        make_app: Callable[..., Flask], pg_env: Callable[..., dict[str, str]], pool: ProcessPool,
        tmp_path: Path) -> None:
    app = make_app("postgres", ASYNC_TASK_PROCESSORS=["tests.chaos_processors"])
    pool.start_worker("a", pg_env(ASYNC_TASK_PROCESSORS="tests.chaos_processors",
                                  **{RUN_DIR_ENV: str(tmp_path)}))
    wait_for_workers(app, pool, 1)
    [task_id] = submit(app, 1, task_type=LOST_CONNECTION_TYPE)

    try:
        wait_for(pool, lambda: task_state(app, task_id)["status"] == "SUCCESS", timeout=30,
                 message="the task SUCCESS after its first attempt lost its connection")
    except AssertionError:
        raise AssertionError(f"task {task_id} is {task_state(app, task_id)}, events "
                             f"{event_kinds(app, task_id)}") from None
    state = task_state(app, task_id)
    assert state["result"]["attempt"] >= 2, state
    assert committed_runs(app).get(task_id, 0) == 0, "the failed attempt's row was committed"
    pool.assert_alive()
