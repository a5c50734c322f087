"""Redis killed and restarted mid-run.

Expected: the workers notice the outage (``REDIS UNAVAILABLE``), keep claiming and finishing
on database claims alone, notice when Redis is back (``Redis is reachable again``) and take
per-task locks again; every task ends SUCCESS with exactly one committed effect, and no lock
key is left behind. (tests/test_worker_processes.py restarts Redis after the queue drained;
here the restart happens while tasks are still running, so locks taken before the outage are
gone under running tasks.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from flask import Flask

from tests.faults.support import (
    assert_logs_clean,
    assert_succeeded_exactly_once,
    status_counts,
    submit,
    wait_for,
    wait_for_workers,
)
from tests.proc_utils import ProcessPool, RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

TASKS = 400


@pytest.mark.timeout(90)
def test_redis_killed_and_restarted_mid_run_loses_and_repeats_nothing(
        pg_app: Flask, pg_env: Callable[..., dict[str, str]], pool: ProcessPool, run_log: Path,
        private_redis: RedisServer, lock_prefix: str) -> None:
    env = pg_env(redis_url=private_redis.url)
    pool.start_worker("a", env)
    pool.start_worker("b", env)
    wait_for_workers(pg_app, pool, 2)
    started = time.monotonic()
    writers = submit(pg_app, TASKS // 2, seconds=0.03)
    ids = writers + submit(pg_app, TASKS // 2, seconds=0.03, write_db=False)
    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] >= 40, timeout=30, message="40 tasks done")

    private_redis.kill()
    killed_at = status_counts(pg_app)["SUCCESS"]
    wait_for(pool, lambda: "REDIS UNAVAILABLE" in pool.all_logs(), timeout=10, message="outage noticed")
    time.sleep(1.0)  # tasks keep finishing without Redis
    during = status_counts(pg_app)["SUCCESS"]
    private_redis.start()
    restarted_at = status_counts(pg_app)["SUCCESS"]
    assert restarted_at < TASKS, "the restart came too late to be mid-run"
    assert during > killed_at, "no task finished while Redis was down"

    wait_for(pool, lambda: status_counts(pg_app)["SUCCESS"] == TASKS, timeout=60,
             message=f"all {TASKS} tasks SUCCESS")
    elapsed = time.monotonic() - started
    wait_for(pool, lambda: "Redis is reachable again" in pool.all_logs(), timeout=10,
             message="workers noticed Redis is back")
    report = assert_succeeded_exactly_once(pg_app, run_log, ids, writers)
    assert status_counts(pg_app)["PROCESSING"] == 0
    client = redis.Redis.from_url(private_redis.url)
    assert client.keys(f"{lock_prefix}lock:task:*") == [], "task locks left behind"
    client.close()
    assert_logs_clean(pool.all_logs(), "Traceback")
    print(f"\nFIGURE redis restart: {TASKS} tasks in {elapsed:.1f}s; SUCCESS at kill {killed_at}, "
          f"at restart {restarted_at}; re-runs {len(report.reruns)}, events {dict(report.reasons)}")
