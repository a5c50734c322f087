"""Limits across real worker processes (4 on PostgreSQL, 2 on SQLite), checked from the event log.

Every claim and every end of an attempt writes a ``task_event`` stamped by one clock (the
database's on PostgreSQL; on SQLite the machine's, under the database's one write lock), so the
number of PROCESSING tasks at any moment and the starts in any window can be read back exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests.conftest import wait_until
from tests.proc_utils import ProcessPool, worker_environment
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.leases import LEASE_ENDING_EVENTS
from webapp.tasks.models import AsyncTask, TaskEvent, Worker

PROCESSORS = "tests.processors,tests.limit_processors"
WORKERS = {"postgres": 4, "sqlite": 2}


def _start_workers(app: Flask, backend: str, pool: ProcessPool, tmp_path: Path) -> None:
    env = worker_environment(app.config["SQLALCHEMY_DATABASE_URI"], redis_url=None,
                             lock_prefix=f"limits-{uuid.uuid4().hex[:8]}:", run_log=tmp_path / "runs.log",
                             tmp_path=tmp_path, ASYNC_TASK_PROCESSORS=PROCESSORS,
                             ASYNC_TASK_POLL_INTERVAL="0.1")
    for n in range(WORKERS[backend]):
        pool.start_worker(f"w{n}", env, concurrency=4)

    def all_running() -> bool:
        pool.assert_alive()
        with app.app_context():
            try:
                return db.session.scalar(select(func.count()).select_from(Worker)
                                         .where(Worker.status == "RUNNING")) == WORKERS[backend]
            finally:
                db.session.remove()

    wait_until(all_running, timeout=60, interval=0.2, message="workers running")


def _all_succeeded(app: Flask, pool: ProcessPool, task_type: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        pool.assert_alive()
        with app.app_context():
            try:
                return db.session.scalar(select(func.count()).select_from(AsyncTask).where(
                    AsyncTask.task_type == task_type, AsyncTask.status == "SUCCESS")) == count
            finally:
                db.session.remove()
    return check


def _events(app: Flask, task_type: str) -> list[tuple[object, str]]:
    with app.app_context():
        rows = db.session.execute(
            select(TaskEvent.at, TaskEvent.kind).join(AsyncTask, AsyncTask.id == TaskEvent.task_id)
            .where(AsyncTask.task_type == task_type)).all()
        db.session.remove()
    return [(row.at, row.kind) for row in rows]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_concurrency_two_of_one_key_holds_across_every_worker(make_app, backend, pool, tmp_path):
    app = make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS.split(","))
    _start_workers(app, backend, pool, tmp_path)
    with app.app_context():
        AsyncTaskService().submit_many([{"task_type": "PER_CUSTOMER", "payload": {"customer_id": 42, "seconds": 0.02}}
                                        for _ in range(200)])
        db.session.remove()
    wait_until(_all_succeeded(app, pool, "PER_CUSTOMER", 200), timeout=240, interval=0.5, message="200 done")
    # At equal times an end counts before a start: a claim that saw the slot free came after it.
    moves = sorted((at, 0 if kind in LEASE_ENDING_EVENTS else 1) for at, kind in _events(app, "PER_CUSTOMER")
                   if kind == "CLAIMED" or kind in LEASE_ENDING_EVENTS)
    running = highest = 0
    for _, starts in moves:
        running += 1 if starts else -1
        highest = max(highest, running)
    assert sum(starts for _, starts in moves) == 200 and running == 0
    assert highest == 2  # never more than the limit, and the limit was used


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_rate_ten_per_second_holds_across_every_worker_and_is_reached(make_app, backend, pool, tmp_path):
    app = make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS.split(","))
    _start_workers(app, backend, pool, tmp_path)
    with app.app_context():
        AsyncTaskService().submit_many([{"task_type": "RATED_TEN", "payload": {"n": n}} for n in range(60)])
        db.session.remove()
    wait_until(_all_succeeded(app, pool, "RATED_TEN", 60), timeout=120, interval=0.5, message="60 done")
    starts = sorted(at for at, kind in _events(app, "RATED_TEN") if kind == "CLAIMED")
    assert len(starts) == 60
    second = timedelta(seconds=1)
    busiest = max(sum(1 for other in starts if start <= other < start + second) for start in starts)
    assert busiest == 10  # no 1-second window holds more than 10 starts, and one holds 10
    assert starts[-1] - starts[0] >= timedelta(seconds=5)  # 60 starts need at least 5 whole windows
