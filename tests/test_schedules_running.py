"""Schedules under a running consumer (its scheduler job, real time): overlap policies with tasks
longer than the interval, and a schedule edited while it fires. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import select, text

from tests.conftest import wait_until
from webapp.extensions import db
from webapp.schedules.models import Schedule, ScheduleRun
from webapp.schedules.service import ScheduleService
from webapp.tasks.consumer import Consumer
from webapp.tasks.models import AsyncTask


def running_app(make_app: Callable[..., Flask], backend: str) -> Flask:
    app = make_app(backend, ASYNC_TASK_SCHEDULER_INTERVAL=0.2, ASYNC_TASK_CONCURRENCY=8)
    with app.app_context():
        db.session.execute(text("DELETE FROM schedule_run"))
        db.session.execute(text("DELETE FROM schedule"))
        db.session.commit()
    return app


def runs_of(app: Flask, name: str) -> list[tuple[ScheduleRun, AsyncTask | None]]:
    with app.app_context():
        try:
            rows = db.session.execute(
                select(ScheduleRun, AsyncTask).join(Schedule, Schedule.id == ScheduleRun.schedule_id)
                .outerjoin(AsyncTask, AsyncTask.id == ScheduleRun.task_id)
                .where(Schedule.name == name).order_by(ScheduleRun.slot_at)).all()
            for run, task in rows:
                db.session.expunge(run)
                if task is not None:
                    db.session.expunge(task)
            return [(run, task) for run, task in rows]
        finally:
            db.session.remove()


def test_overlap_policies_with_tasks_longer_than_the_interval(make_app: Callable[..., Flask],
                                                              backend: str) -> None:
    app = running_app(make_app, backend)
    with app.app_context():
        for policy in ("allow", "skip", "cancel_previous"):
            # Each task runs 2.5 s (and stops early when asked to cancel); a slot comes every second.
            ScheduleService().create({"name": policy, "task_type": "POLLS_CANCEL", "interval_seconds": 1,
                                      "overlap": policy, "payload": {"seconds": 2.5}}, actor="test")
        db.session.remove()
    consumer = Consumer(app).start()
    try:
        wait_until(lambda: all(len(runs_of(app, name)) >= 4 for name in ("allow", "skip", "cancel_previous")),
                   timeout=20, message="four slots of every schedule")
        with app.app_context():
            for name in ("allow", "skip", "cancel_previous"):
                ScheduleService().set_enabled(name, False, actor="test")
            db.session.remove()
    finally:
        consumer.stop(grace=5)

    # Slots come every second and each task needs 2.5 s. On a loaded machine a slot can be
    # written late, so each check looks at what was unfinished when the next slot was written.
    slack = timedelta(seconds=0.3)
    allow = runs_of(app, "allow")
    allow_tasks = [task for _, task in allow]
    assert all(task is not None and task.status != "CANCELLED" for task in allow_tasks), allow_tasks
    assert any(later.started_at is not None and earlier.finished_at is not None
               and later.started_at < earlier.finished_at
               for earlier, later in zip(allow_tasks, allow_tasks[1:], strict=False) if earlier and later), \
        "allow: a run starts while the previous one still runs"

    skip = runs_of(app, "skip")
    skipped = [run for run, task in skip if task is None]
    assert skipped and all("has not finished" in (run.skip_reason or "") for run in skipped), skip
    skip_tasks = [task for _, task in skip if task is not None]
    for earlier, later in zip(skip_tasks, skip_tasks[1:], strict=False):
        # A slot is only taken once the previous task has finished: never two at once.
        assert earlier.finished_at is not None, earlier
        assert later.created_at >= earlier.finished_at - timedelta(seconds=0.05), (earlier.finished_at,
                                                                                   later.created_at)

    cancel = runs_of(app, "cancel_previous")
    assert all(task is not None for _, task in cancel)
    cancelled = 0
    for (_, earlier), (later_run, _) in zip(cancel, cancel[1:], strict=False):
        assert earlier is not None
        if earlier.finished_at is None or earlier.finished_at > later_run.created_at + slack:
            # Still waiting or running when the next slot came: that slot cancelled it (a running
            # task is asked to stop; one finishing at that very moment may still succeed).
            assert earlier.status == "CANCELLED" or earlier.cancel_requested_at is not None, \
                [(task.status, task.cancel_requested_at) for _, task in cancel if task is not None]
        # Counted once the cancel is requested (a running task stops at its next poll, which may
        # come after this read), and whether or not it stopped within the slack of the next slot.
        cancelled += earlier.status == "CANCELLED" or earlier.cancel_requested_at is not None
    assert cancelled >= 1


def test_a_schedule_edited_while_running_follows_the_new_definition(make_app: Callable[..., Flask],
                                                                    backend: str) -> None:
    app = running_app(make_app, backend)
    with app.app_context():
        ScheduleService().create({"name": "edited", "task_type": "NOOP", "interval_seconds": 1,
                                  "payload": {"v": 1}}, actor="test")
        db.session.remove()
    consumer = Consumer(app).start()
    try:
        wait_until(lambda: len(runs_of(app, "edited")) >= 2, timeout=10, message="two slots before the edit")
        with app.app_context():
            edited = ScheduleService().update("edited", {"interval_seconds": 2, "payload": {"v": 2}}, actor="test")
            edited_at = edited.updated_at
            db.session.remove()
        wait_until(lambda: len([run for run, _ in runs_of(app, "edited") if run.slot_at > edited_at]) >= 2,
                   timeout=15, message="two slots after the edit")
        with app.app_context():
            ScheduleService().set_enabled("edited", False, actor="test")
            db.session.remove()
    finally:
        consumer.stop(grace=5)

    runs = runs_of(app, "edited")
    slots = [run.slot_at for run, _ in runs]
    assert len(slots) == len(set(slots))
    before = [(run, task) for run, task in runs if run.slot_at <= edited_at]
    after = [(run, task) for run, task in runs if run.slot_at > edited_at]
    assert all(task is not None and task.payload == {"v": 1} for _, task in before)
    assert all(task is not None and task.payload == {"v": 2} for _, task in after)
    gaps = {(b.slot_at - a.slot_at).total_seconds() for (a, _), (b, _) in zip(after, after[1:], strict=False)}
    assert gaps == {2.0}


def test_a_scheduler_stopped_and_restarted_under_each_catch_up_policy(make_app: Callable[..., Flask],
                                                                      backend: str) -> None:
    # Scaled down from "a minute": slots every second, a 2 s misfire grace, about 6 s of downtime.
    app = make_app(backend, ASYNC_TASK_SCHEDULER_INTERVAL=0.2, ASYNC_TASK_SCHEDULE_MISFIRE_GRACE=2)
    with app.app_context():
        db.session.execute(text("DELETE FROM schedule_run"))
        db.session.execute(text("DELETE FROM schedule"))
        db.session.commit()
        for policy in ("none", "latest", "all"):
            ScheduleService().create({"name": f"c-{policy}", "task_type": "NOOP", "interval_seconds": 1,
                                      "catch_up": policy}, actor="test")
        db.session.remove()
    names = ("c-none", "c-latest", "c-all")
    consumer = Consumer(app).start()
    wait_until(lambda: all(len(runs_of(app, name)) >= 2 for name in names), timeout=10, message="slots before the stop")
    consumer.stop(grace=5)
    stopped = {name: runs_of(app, name)[-1][0].slot_at for name in names}
    down = max(stopped.values()) + timedelta(seconds=6)
    wait_until(lambda: _utcnow() >= down, timeout=10, interval=0.1, message="six seconds of downtime")
    consumer = Consumer(app).start()
    try:
        wait_until(lambda: all(any(run.slot_at >= down for run, _ in runs_of(app, name)) for name in names),
                   timeout=10, message="slots after the restart")
    finally:
        consumer.stop(grace=5)

    for name in names:
        runs = runs_of(app, name)
        every_slot = [run.slot_at for run, _ in runs]
        # Every slot has exactly one record, run or missed: the history has no hole.
        assert len(every_slot) == len(set(every_slot))
        assert {(b - a).total_seconds() for a, b in zip(every_slot, every_slot[1:], strict=False)} == {1.0}
        slots = [run.slot_at for run, task in runs if task is not None]
        missed = [run for run, task in runs if task is None]
        assert all((run.skip_reason or "").startswith("missed:") for run in missed)
        after = [run for run, _ in runs if run.slot_at > stopped[name]]
        caught_up = [run for run in after if run.kind == "catch_up"]
        # Slots at least the grace older than the restart were missed; the others ran on time.
        gaps = [(b - a).total_seconds() for a, b in zip(slots, slots[1:], strict=False)]
        if name == "c-none":
            assert caught_up == [] and max(gaps) >= 3 and len(missed) >= 2, (name, gaps)
        elif name == "c-latest":
            assert len(caught_up) == 1 and max(gaps) >= 2 and missed, (name, gaps)
        else:
            assert len(caught_up) >= 3 and set(gaps) == {1.0} and missed == [], (name, gaps)


def _utcnow() -> datetime:
    return datetime.now(UTC)
