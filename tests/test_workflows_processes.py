"""A 1,000-task fan-in on real worker processes: three ``flask tasks worker`` processes (on
PostgreSQL + Redis, and on one SQLite file), one killed with ``kill -9`` mid-way; its callbacks
are created and run once.

See ``tests/test_worker_processes.py`` for the process harness (``tests/proc_utils.py``).
"""

from __future__ import annotations

import collections
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests.conftest import wait_until
from tests.proc_utils import ProcessPool, read_run_log, worker_environment
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AsyncTask
from webapp.workflows.models import Workflow

PROCESSORS = ["tests.proc_processors"]
FAN_IN = 1000


@pytest.fixture(params=["postgres", "sqlite"])
def setup(request: pytest.FixtureRequest, make_app: Callable[..., Flask], tmp_path: Path
          ) -> tuple[Flask, dict[str, str]]:
    """The submitting app and the workers' environment: PostgreSQL + Redis, or one SQLite file."""
    postgres = request.param == "postgres"
    app = make_app(request.param, redis=postgres, ASYNC_TASK_PROCESSORS=PROCESSORS)
    env = worker_environment(app.config["SQLALCHEMY_DATABASE_URI"],
                             redis_url=request.getfixturevalue("redis_url") if postgres else None,
                             lock_prefix=f"wfproc-{uuid.uuid4().hex[:8]}:", run_log=tmp_path / "runs.log",
                             tmp_path=tmp_path)
    return app, env


def workflow_state(app: Flask, workflow_id: int) -> dict[str, Any]:
    with app.app_context():
        workflow = db.session.get(Workflow, workflow_id)
        statuses = dict(db.session.execute(
            select(AsyncTask.status, func.count()).where(AsyncTask.workflow_id == workflow_id)
            .group_by(AsyncTask.status)).all())
        callbacks = db.session.execute(
            select(AsyncTask.id, AsyncTask.status, AsyncTask.workflow_key)
            .where(AsyncTask.workflow_id == workflow_id, AsyncTask.workflow_key.startswith("@"))).all()
        state = {"status": workflow.status, "succeeded": workflow.succeeded, "statuses": statuses,
                 "callbacks": [tuple(c) for c in callbacks]}
        db.session.rollback()
        return state


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_1000_task_fan_in_survives_kill_9_and_its_callback_runs_once(setup, pool: ProcessPool,
                                                                     tmp_path: Path) -> None:
    pg_app, worker_env = setup
    workers = [pool.start_worker(f"w{index}", worker_env) for index in range(3)]
    with pg_app.app_context():
        # Half the tasks write in their own transaction (single finish), half do not (batched finish).
        submitted = AsyncTaskService().submit_workflow(
            tasks=[{"key": f"part-{i}", "task_type": "PROC_RECORD",
                    "payload": {"seconds": 0.01, "write_db": i % 2 == 0}} for i in range(FAN_IN)],
            name="fan-in", callbacks={"on_success": {"task_type": "PROC_RECORD", "payload": {"write_db": False}},
                                      "on_finish": {"task_type": "PROC_RECORD", "payload": {"write_db": False}}})
    started = time.monotonic()

    def progressed() -> bool:
        pool.assert_alive()
        return workflow_state(pg_app, submitted.workflow_id)["succeeded"] >= FAN_IN // 3

    wait_until(progressed, timeout=120, interval=0.05, message="a third of the fan-in done")
    victim = workers[1]
    victim.send(signal.SIGKILL)
    victim.wait_exit(timeout=10)
    at_kill = workflow_state(pg_app, submitted.workflow_id)
    assert at_kill["status"] == "RUNNING" and at_kill["callbacks"] == [], at_kill

    def callbacks_done() -> bool:
        pool.assert_alive()
        state = workflow_state(pg_app, submitted.workflow_id)
        return len(state["callbacks"]) == 2 and all(status == "SUCCESS" for _, status, _ in state["callbacks"])

    wait_until(callbacks_done, timeout=200, interval=0.1, message="both callbacks SUCCESS after the kill")
    elapsed = time.monotonic() - started
    final = workflow_state(pg_app, submitted.workflow_id)
    assert final["status"] == "SUCCEEDED" and final["succeeded"] == FAN_IN
    assert final["statuses"] == {"SUCCESS": FAN_IN + 2}
    assert sorted(key for _, _, key in final["callbacks"]) == ["@on_finish", "@on_success"]
    # Each callback ran once, on a survivor; each part finished (a part killed mid-run ran again).
    starts = collections.Counter(r.task_id for r in read_run_log(tmp_path / "runs.log") if r.event == "start")
    for callback_id, _, _ in final["callbacks"]:
        assert starts[callback_id] == 1
    assert set(submitted.task_ids.values()) <= set(starts)
    time.sleep(1.0)  # nothing else appears later: no second callback from a late finisher
    assert len(workflow_state(pg_app, submitted.workflow_id)["callbacks"]) == 2
    assert "database is locked" not in pool.all_logs()
    print(f"\nFIGURE fan-in of {FAN_IN} tasks ({pg_app.config['SQLALCHEMY_DATABASE_URI'].split(':')[0]}), 3 workers (one killed with kill -9 after "
          f"{at_kill['succeeded']} had succeeded): callbacks done {elapsed:.1f} s after submit; "
          f"re-run parts {sum(1 for n in starts.values() if n > 1)}")
