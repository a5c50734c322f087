"""A processor that kills its worker process on every attempt (``os._exit(1)``): a poison pill.

Two workers run under a supervisor that restarts any worker that exits (as systemd or a
Procfile runner would). Expected: each attempt of the pill kills the worker that claimed it; its
heartbeats stop and a peer's recovery sweep sends it back to PENDING, ``max_retry_count + 1``
times (max_retry_count is 1 here, so 2 RECOVERED events and 3 deaths); the sweep after the last
death ends it FAILURE with an error saying it was recovered too often and giving up. Meanwhile
the other tasks, including those submitted after each death and those that shared a dying
worker with the pill, all succeed exactly once, and no worker dies once the pill is FAILURE.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.faults.processors import POISON_TYPE, PoisonPillProcessor
from tests.faults.support import (
    Supervisor,
    assert_succeeded_exactly_once,
    count_where,
    event_kinds,
    submit,
    task_state,
    wait_for,
    wait_for_workers,
)
from tests.proc_utils import ProcessPool, count_runs, read_run_log

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

MAX_RETRY = PoisonPillProcessor.retry_config.max_retry_count  # type: ignore[union-attr]


@pytest.mark.timeout(120)
def test_poison_pill_ends_failure_and_the_workers_keep_processing(
        pg_app: Flask, pg_env: Callable[..., dict[str, str]], pool: ProcessPool, run_log: Path) -> None:
    supervisor = Supervisor(pool, pg_env(), slots=2, concurrency=2).start()
    try:
        wait_for_workers(pg_app, None, 2)
        others = submit(pg_app, 20, seconds=0.1)
        [pill] = submit(pg_app, 1, task_type=POISON_TYPE)
        seen_deaths = 0

        def pill_finished() -> bool:
            nonlocal seen_deaths
            # Fresh work after every death: processing must go on between the pill's attempts.
            while seen_deaths < len(supervisor.deaths):
                seen_deaths += 1
                others.extend(submit(pg_app, 10, seconds=0.1))
            return task_state(pg_app, pill)["status"] == "FAILURE"

        wait_for(None, pill_finished, timeout=60, interval=0.2, message="the poison pill FAILURE")
        wait_for(None, lambda: count_where(pg_app, others, "SUCCESS") == len(others), timeout=30,
                 message="every other task SUCCESS")
        deaths_at_failure = list(supervisor.deaths)
        more = submit(pg_app, 10, seconds=0.05)  # after the pill: the restarted workers carry on
        wait_for(None, lambda: count_where(pg_app, more, "SUCCESS") == len(more), timeout=30,
                 message="tasks submitted after the pill SUCCESS")
        time.sleep(1.0)
        assert supervisor.deaths == deaths_at_failure, "a worker died after the pill had failed"
    finally:
        supervisor.stop()

    state = task_state(pg_app, pill)
    kinds = event_kinds(pg_app, pill)
    assert kinds.count("RECOVERED") == MAX_RETRY + 1 and kinds[-1] == "FAILED", kinds
    assert state["recovery_count"] == MAX_RETRY + 2, state
    assert "giving up" in state["error"] and f"max_retry_count + 1 = {MAX_RETRY + 1}" in state["error"], state
    pill_starts = count_runs(read_run_log(run_log), "start")[pill]
    assert pill_starts == MAX_RETRY + 2, pill_starts
    assert len(deaths_at_failure) == pill_starts, deaths_at_failure
    assert all(code == 1 for _, _, code in deaths_at_failure), deaths_at_failure
    report = assert_succeeded_exactly_once(pg_app, run_log, others + more)
    restarted = {w.pid for w in supervisor.current}
    late_runners = {r.pid for r in read_run_log(run_log) if r.event == "done" and r.task_id in set(more)}
    assert late_runners <= restarted and late_runners, (late_runners, restarted)
    print(f"\nFIGURE poison pill: {pill_starts} deaths (exit 1), FAILURE after {kinds.count('RECOVERED')} "
          f"recoveries; {len(others) + len(more)} other tasks SUCCESS once each, "
          f"{len(report.reruns)} re-run after sharing a dying worker; error: {state['error']!r}")
