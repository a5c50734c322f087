"""Process isolation in real ``flask tasks worker`` processes on PostgreSQL: hung and crashing
children fail only their attempts, and the workers stay up and keep running tasks."""

from __future__ import annotations

import uuid

from flask import Flask
from sqlalchemy import func, select

from tests.conftest import wait_until
from tests.proc_utils import worker_environment
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AsyncTask, Worker

PROCESSORS = "tests.processors,tests.isolation_processors"


def _count(app: Flask, *conditions) -> int:
    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(AsyncTask).where(*conditions)) or 0)
        finally:
            db.session.remove()


def test_workers_survive_hung_and_crashing_children(make_app, pool, tmp_path):
    app = make_app("postgres", ASYNC_TASK_PROCESSORS=PROCESSORS.split(","))
    env = worker_environment(app.config["SQLALCHEMY_DATABASE_URI"], redis_url=None,
                             lock_prefix=f"isolation-{uuid.uuid4().hex[:8]}:", run_log=tmp_path / "runs.log",
                             tmp_path=tmp_path, ASYNC_TASK_PROCESSORS=PROCESSORS, ASYNC_TASK_POLL_INTERVAL="0.1",
                             # Spinning children take whole cores of a small machine: beats of 2 s keep a
                             # slow heartbeat from passing for a dead worker.
                             ASYNC_TASK_HEARTBEAT_INTERVAL="2")
    for name in ("w0", "w1"):
        pool.start_worker(name, env, concurrency=3)

    def running() -> bool:
        pool.assert_alive()
        with app.app_context():
            try:
                return db.session.scalar(select(func.count()).select_from(Worker)
                                         .where(Worker.status == "RUNNING")) == 2
            finally:
                db.session.remove()

    wait_until(running, timeout=60, interval=0.2, message="workers running")
    with app.app_context():
        service = AsyncTaskService()
        bad = [service.submit_task("SPIN_FOREVER", {}).id, service.submit_task("CRASH", {"how": "segfault"}).id,
               service.submit_task("CRASH", {"how": "exit"}).id]
        good = [service.submit_task("WHERE_AM_I", {}).id for _ in range(6)]
        db.session.remove()

    def settled() -> bool:
        pool.assert_alive()
        return _count(app, AsyncTask.id.in_(bad), AsyncTask.status == "FAILURE") == len(bad) and \
            _count(app, AsyncTask.id.in_(good), AsyncTask.status == "SUCCESS") == len(good)

    wait_until(settled, timeout=90, interval=0.3, message="bad tasks failed, good ones succeeded")
    with app.app_context():
        errors = {AsyncTaskService().require_task(task_id).error for task_id in bad}
        db.session.remove()
    assert errors == {"time limit of 2 s exceeded", "the child process running the task died (killed by SIGSEGV)",
                      "the child process running the task died (exit code 1)"}
    # Both workers are still up and take new work.
    later = [_submit_noop(app) for _ in range(4)]
    wait_until(lambda: (pool.assert_alive(), _count(app, AsyncTask.id.in_(later), AsyncTask.status == "SUCCESS")
                        == len(later))[1], timeout=30, message="tasks after the crashes")
    wait_until(running, timeout=30, interval=0.3, message="both workers running")


def _submit_noop(app: Flask) -> int:
    with app.app_context():
        task_id = AsyncTaskService().submit_task("WHERE_AM_I", {}).id
        db.session.remove()
    return task_id
