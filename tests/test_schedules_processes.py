"""Three real worker processes run the scheduler job at once: exactly one task per slot, none missed.

Each ``flask tasks worker`` runs the ``schedules`` job every second; nothing elects a leader and
nothing is in Redis. A 1-second interval schedule runs for 15 slots; afterwards every slot from
the first to the last has exactly one run record and one task, whichever process wrote it.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select, text

from tests.conftest import wait_until
from tests.proc_utils import ProcessPool, worker_environment
from webapp.extensions import db
from webapp.schedules.models import Schedule, ScheduleRun
from webapp.schedules.service import ScheduleService
from webapp.tasks.models import AsyncTask, Worker

SLOTS = 15
NAME = "every-second"


def runs_so_far(app: Flask) -> int:
    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(ScheduleRun)) or 0)
        finally:
            db.session.remove()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_three_schedulers_write_exactly_one_task_per_slot(make_app: Callable[..., Flask], backend: str,
                                                          pool: ProcessPool, tmp_path: Path) -> None:
    app = make_app(backend, ASYNC_TASK_PROCESSORS=["tests.proc_processors"])
    env = worker_environment(app.config["SQLALCHEMY_DATABASE_URI"], redis_url=None,
                             lock_prefix=f"sched-{uuid.uuid4().hex[:8]}:", run_log=tmp_path / "runs.log",
                             tmp_path=tmp_path, ASYNC_TASK_POLL_INTERVAL="1",
                             # Ticking five times a second makes the three race for nearly every slot.
                             ASYNC_TASK_SCHEDULER_INTERVAL="0.2")
    with app.app_context():
        db.session.execute(text("DELETE FROM schedule_run"))
        db.session.execute(text("DELETE FROM schedule"))
        db.session.commit()
    for name in ("a", "b", "c"):
        pool.start_worker(name, env, concurrency=2)

    def workers_running() -> bool:
        pool.assert_alive()
        with app.app_context():
            try:
                return db.session.scalar(select(func.count()).select_from(Worker).where(
                    Worker.status == "RUNNING")) == 3
            finally:
                db.session.remove()

    wait_until(workers_running, timeout=60, interval=0.2, message="three workers running")
    with app.app_context():
        ScheduleService().create({"name": NAME, "task_type": "PROC_RECORD", "interval_seconds": 1,
                                  "payload": {"write_db": False}}, actor="test")
        db.session.remove()

    def enough_slots() -> bool:
        pool.assert_alive()
        return runs_so_far(app) >= SLOTS

    wait_until(enough_slots, timeout=SLOTS + 30, interval=0.2, message=f"{SLOTS} slots written")
    with app.app_context():
        ScheduleService().set_enabled(NAME, False, actor="test")  # no slot after this one
        schedule = db.session.scalars(select(Schedule).where(Schedule.name == NAME)).one()
        runs = db.session.scalars(select(ScheduleRun).where(ScheduleRun.schedule_id == schedule.id)
                                  .order_by(ScheduleRun.slot_at)).all()
        task_ids = [run.task_id for run in runs]
        tasks = db.session.scalar(select(func.count()).select_from(AsyncTask).where(
            AsyncTask.created_by == f"schedule:{NAME}"))
        lags = [(run.created_at - run.slot_at).total_seconds() for run in runs]
        by_process = collections.Counter(run.created_by for run in runs)
        db.session.remove()

    slots = [run.slot_at for run in runs]
    expected = [slots[0] + timedelta(seconds=index) for index in range(len(slots))]
    missed = len(set(expected) - set(slots))
    duplicates = tasks - len(set(slots))
    print(f"\nFIGURE schedules {backend}: 3 scheduler processes, interval 1 s: {len(slots)} slots, "
          f"{tasks} tasks, {duplicates} duplicates, {missed} missed; slot written after "
          f"{min(lags):.2f}-{max(lags):.2f} s; slots per process {sorted(by_process.values(), reverse=True)}")
    assert len(slots) >= SLOTS
    assert slots == expected, "a slot was missed"
    assert all(run.skip_reason is None for run in runs)
    assert None not in task_ids and len(set(task_ids)) == len(task_ids)
    assert tasks == len(slots)
    assert duplicates == 0 and missed == 0
    assert max(lags) < 5, "a slot was written late"
    assert "Traceback" not in pool.all_logs()
