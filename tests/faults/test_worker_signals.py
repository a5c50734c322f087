"""SIGTERM to a ``flask tasks worker`` mid-task, and SIGKILL of a gunicorn worker running the
embedded consumer.

The graceful stop is covered in depth by tests/test_worker_processes.py
(``test_sigterm_finishes_the_running_task_within_grace``,
``test_sigterm_with_short_grace_releases_the_task_to_pending``); the version here mixes both
endings in one worker and checks the whole batch for loss and repeats.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.faults.support import (
    STALE_THRESHOLD,
    Gunicorn,
    assert_succeeded_exactly_once,
    event_kinds,
    first_start_by,
    status_counts,
    submit,
    task_state,
    wait_for,
    wait_for_workers,
    worker_statuses,
)
from tests.proc_utils import ProcessPool, count_runs, free_port, read_run_log, tail

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@pytest.mark.timeout(60)
def test_sigterm_mid_task_finishes_short_tasks_and_releases_long_ones(
        pg_app: Flask, pg_env: Callable[..., dict[str, str]], pool: ProcessPool, run_log: Path) -> None:
    """Expected: with a 1.5 s grace, the two tasks that need 0.8 s finish SUCCESS in the stopping
    worker, the two that need 30 s are RELEASED to PENDING (their writes rolled back), the worker
    exits 0 within a few seconds, and the next worker runs the released ones (attempt 2) once."""
    stopping = pool.start_worker("stopping", pg_env(ASYNC_TASK_SHUTDOWN_GRACE=1.5), concurrency=4)
    wait_for_workers(pg_app, pool, 1)
    short = submit(pg_app, 2, seconds=0.8)
    long = submit(pg_app, 2, seconds=30, slow_attempts=[1])
    wait_for(pool, lambda: len(count_runs(read_run_log(run_log), "start")) == 4, timeout=10,
             message="all four tasks started")

    stopping.send(signal.SIGTERM)
    sent = time.monotonic()
    assert stopping.wait_exit(15) == 0
    stop_seconds = time.monotonic() - sent
    assert stop_seconds < 5, f"the stop took {stop_seconds:.1f}s"
    for task_id in short:
        assert task_state(pg_app, task_id)["status"] == "SUCCESS"
    for task_id in long:
        assert task_state(pg_app, task_id)["status"] == "PENDING"
        assert event_kinds(pg_app, task_id)[-1] == "RELEASED"
    assert "released 2 task(s)" in stopping.log_text()
    assert worker_statuses(pg_app)[stopping.pid] == "STOPPED"

    successor = pool.start_worker("successor", pg_env())
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == 4, timeout=20,
             message="released tasks finished by the next worker")
    report = assert_succeeded_exactly_once(pg_app, run_log, short + long)
    assert report.reruns == {task_id: 2 for task_id in long}
    assert all(task_state(pg_app, t)["result"]["pid"] == successor.pid for t in long)
    print(f"\nFIGURE SIGTERM: worker stopped in {stop_seconds:.2f}s (grace 1.5s); 2 finished, 2 released")


@pytest.mark.timeout(90)
def test_sigkill_of_a_gunicorn_worker_is_recovered_and_respawned(
        pg_app: Flask, pg_env: Callable[..., dict[str, str]], run_log: Path, tmp_path: Path) -> None:
    """Expected: gunicorn (2 workers, each running the embedded consumer) keeps serving after
    one worker is SIGKILLed mid-task; the master respawns it; the killed worker's tasks are
    recovered once its heartbeats stop (``RECOVERED`` events, worker row DEAD) and every task
    succeeds exactly once, committed once."""
    port = free_port()
    env = pg_env(ASYNC_TASK_CONSUMER_ENABLED="true", ASYNC_TASK_CONCURRENCY=3)
    server = Gunicorn.start(tmp_path, port, env, workers=2)
    try:
        def answers() -> bool:
            assert server.process.poll() is None, tail(server.log_text())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_for(None, answers, timeout=30, message="gunicorn answering /healthz")
        wait_for_workers(pg_app, None, 2)
        original = server.worker_pids()
        assert len(original) == 2, original
        assert set(worker_statuses(pg_app)) == original, "a consumer runs in each gunicorn worker"

        ids = submit(pg_app, 24, seconds=1.0, slow_attempts=[1])
        victim_run = wait_for(None, lambda: first_start_by(run_log, lambda r: r.pid in original),
                              timeout=15, message="a task started in a gunicorn worker")
        victim = victim_run.pid
        time.sleep(0.3)  # well inside the 1 s of work of the tasks it holds
        held = [r.task_id for r in read_run_log(run_log) if r.pid == victim and r.event == "start"]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)

        wait_for(None, lambda: len(server.worker_pids() - {victim}) == 2, timeout=30,
                 message="the master respawned a worker")
        respawned = (server.worker_pids() - original).pop()
        wait_for(None, lambda: status_counts(pg_app)["SUCCESS"] == len(ids), timeout=40,
                 message="every task SUCCESS after the kill")
        elapsed = time.monotonic() - killed_at
        assert server.process.poll() is None, "the gunicorn master died"
        report = assert_succeeded_exactly_once(pg_app, run_log, ids)
        # The attempts the kill interrupted were recovered (not released: no shutdown ran).
        unfinished = [t for t in held if (t, victim) not in
                      {(r.task_id, r.pid) for r in read_run_log(run_log) if r.event == "done"}]
        assert unfinished, f"the kill interrupted no task (held {held})"
        for task_id in unfinished:
            kinds = event_kinds(pg_app, task_id)
            assert "RECOVERED" in kinds and "RELEASED" not in kinds, (task_id, kinds)
            assert task_state(pg_app, task_id)["result"]["pid"] != victim
        statuses = worker_statuses(pg_app)
        assert statuses[victim] == "DEAD", statuses
        wait_for(None, lambda: worker_statuses(pg_app).get(respawned) == "RUNNING", timeout=15,
                 message="the respawned worker's consumer RUNNING")
        print(f"\nFIGURE gunicorn SIGKILL: {len(unfinished)} interrupted task(s) recovered, all "
              f"{len(ids)} SUCCESS {elapsed:.1f}s after the kill (stale threshold {STALE_THRESHOLD}s); "
              f"events {dict(report.reasons)}")
    finally:
        server.stop()
