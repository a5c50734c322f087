"""PostgreSQL connections killed (``pg_terminate_backend``) several times mid-run.

Two ``flask tasks worker`` processes drain 500 tasks while every connection to the test
database is terminated five times. Expected: claims, finishes, heartbeats, the wake-up
listener and the notifier reconnect (pool pre-ping, reconnect loops); an attempt whose
transaction died is failed and retried (or recovered) and its writes are rolled back with it,
so every task ends SUCCESS exactly once with exactly one committed effect, none is left
PROCESSING, and both workers keep running and take new work afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.faults.support import (
    assert_succeeded_exactly_once,
    status_counts,
    submit,
    terminate_connections,
    wait_for,
    wait_for_workers,
    worker_statuses,
)
from tests.proc_utils import ProcessPool, count_runs, read_run_log

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

TASKS = 500
KILLS = 5


@pytest.mark.timeout(120)
def test_connections_killed_mid_run_every_task_succeeds_once(
        pg_app: Flask, pg_env: Callable[..., dict[str, str]], pool: ProcessPool, run_log: Path,
        pg_url: str) -> None:
    env = pg_env()
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(pg_app, pool, 2)
    started = time.monotonic()
    # Half the processors write in the task's transaction, half do no database work (the
    # finisher's batched path); both kinds are in flight when the connections die.
    writers = submit(pg_app, TASKS // 2, seconds=0.03)
    ids = writers + submit(pg_app, TASKS // 2, seconds=0.03, write_db=False)
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] >= 50, timeout=30, message="50 tasks done")

    terminated, done_at_kill = [], []
    for _ in range(KILLS):
        done_at_kill.append(status_counts(pg_app)["SUCCESS"])
        terminated.append(terminate_connections(pg_url))
        time.sleep(0.5)
    assert done_at_kill[-1] < TASKS, f"the kills came too late to be mid-run: {done_at_kill}"
    assert min(terminated) > 0, terminated

    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == TASKS, timeout=60, interval=0.2,
             message=f"all {TASKS} tasks SUCCESS")
    elapsed = time.monotonic() - started
    counts = status_counts(pg_app)
    assert counts["PROCESSING"] == 0 and sum(counts.values()) == TASKS, counts
    report = assert_succeeded_exactly_once(pg_app, run_log, ids, writers)

    # The workers survived and reconnected: both RUNNING, both take new work.
    pool.assert_alive()
    assert set(worker_statuses(pg_app).values()) == {"RUNNING"}, worker_statuses(pg_app)
    before = {w.pid for w in pool.workers}
    more = submit(pg_app, 40, seconds=0.05)
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == TASKS + 40, timeout=30,
             message="tasks submitted after the kills SUCCESS")
    late_pids = {r.pid for r in read_run_log(run_log) if r.event == "done" and r.task_id in set(more)}
    assert late_pids == before, f"not every worker took new work after the kills: {late_pids}"
    assert max(count_runs(read_run_log(run_log), "start")[t] for t in more) == 1
    print(f"\nFIGURE pg_terminate_backend x{KILLS}: {TASKS} tasks in {elapsed:.1f}s; connections "
          f"terminated {terminated}; SUCCESS at each kill {done_at_kill}; tasks re-run "
          f"{len(report.reruns)}; events {dict(report.reasons)}")
