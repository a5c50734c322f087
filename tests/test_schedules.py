"""Schedules service and runner on SQLite and PostgreSQL, with a fixed clock where time matters."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from sqlalchemy import func, select, text

from webapp.extensions import db
from webapp.schedules.errors import DuplicateScheduleName, ScheduleNotFound, StaticScheduleRefused
from webapp.schedules.models import RunKind, Schedule, ScheduleRun
from webapp.schedules.runner import fire_due_schedules
from webapp.schedules.service import ScheduleService
from webapp.schedules.slots import SlotWriter
from webapp.tasks.errors import ValidationError
from webapp.tasks.models import AsyncTask, AuditEntry

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
ZONE = ZoneInfo("Europe/Berlin")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def clear_schedules() -> None:
    """PostgreSQL databases are shared by the tests of a run: start without schedules."""
    db.session.execute(text("DELETE FROM schedule_run"))
    db.session.execute(text("DELETE FROM schedule"))
    db.session.commit()


@pytest.fixture
def ctx(app: Flask) -> Iterator[Flask]:
    with app.app_context():
        clear_schedules()
        yield app
        db.session.rollback()


def service(clock: Clock | None = None) -> ScheduleService:
    return ScheduleService(clock=clock)


def tick(app: Flask, clock: Clock, grace: float = 30, limit: int = 100) -> int:
    return fire_due_schedules(db.session(), app.extensions["async_task"].registry, grace=grace,
                              catch_up_limit=limit, clock=clock)


def slots_of(name: str) -> list[datetime]:
    schedule_id = db.session.scalar(select(Schedule.id).where(Schedule.name == name))
    db.session.rollback()
    return list(db.session.scalars(select(ScheduleRun.slot_at).where(ScheduleRun.schedule_id == schedule_id)
                                   .order_by(ScheduleRun.slot_at)))


def seconds_of_runs(name: str) -> tuple[list[int], list[int]]:
    """Slots (seconds after T0) that created a task, and those recorded without one."""
    schedule_id = db.session.scalar(select(Schedule.id).where(Schedule.name == name))
    runs = db.session.scalars(select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id)
                              .order_by(ScheduleRun.slot_at)).all()
    seconds = [(int((run.slot_at - T0).total_seconds()), run.task_id is not None) for run in runs]
    return [s for s, ran in seconds if ran], [s for s, ran in seconds if not ran]


def new_schedule(clock: Clock, **fields: Any) -> Schedule:
    raw = {"name": "every-10s", "task_type": "NOOP", "interval_seconds": 10, **fields}
    return service(clock).create(raw, actor="tester")


# -- validation ---------------------------------------------------------------------------------

BAD_INPUT = [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * *"}, "cron"),
    ({"cron": "@fortnightly"}, "cron"),
    ({"interval_seconds": 0}, "interval_seconds"),
    ({"interval_seconds": 0.5}, "interval_seconds"),
    ({"cron": "* * * * *", "interval_seconds": 5}, "interval_seconds"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"task_type": "NO_SUCH_TYPE"}, "task_type"),
    ({"task_type": "SLEEP", "payload": {"seconds": "long"}}, "payload.seconds"),
    ({"payload": [1, 2]}, "payload"),
    ({"start_at": "2026-06-02T00:00:00Z", "end_at": "2026-06-01T00:00:00Z"}, "end_at"),
    ({"start_at": "2026-06-02T00:00:00"}, "start_at"),
    ({"name": "has space"}, "name"),
    ({"overlap": "sometimes"}, "overlap"),
    ({"catch_up": "everything"}, "catch_up"),
    ({"priority": "high"}, "priority"),
]


def test_bad_input_names_the_field_and_stores_nothing(ctx: Flask) -> None:
    for fields, field in BAD_INPUT:
        raw = {"name": "bad", "task_type": "NOOP", "interval_seconds": 10, **fields}
        if "cron" in fields and "interval_seconds" not in fields:
            raw.pop("interval_seconds")
        with pytest.raises(ValidationError) as caught:
            service(Clock(T0)).create(raw)
        assert caught.value.field == field, (fields, caught.value.message)
    assert db.session.scalar(select(func.count()).select_from(Schedule)) == 0
    assert db.session.scalar(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.action == "schedule.create")) == 0


def test_duplicate_name_is_refused_naming_name(ctx: Flask) -> None:
    clock = Clock(T0)
    new_schedule(clock)
    with pytest.raises(DuplicateScheduleName) as caught:
        new_schedule(clock, cron="@hourly", interval_seconds=None)
    assert caught.value.field == "name"
    assert db.session.scalar(select(func.count()).select_from(Schedule)) == 1


# -- firing ---------------------------------------------------------------------------------------


def test_one_task_per_slot_with_slots_from_the_schedule_not_the_clock(ctx: Flask) -> None:
    clock = Clock(T0)
    schedule = new_schedule(clock, payload={"n": 1})
    assert schedule.next_fire_at == T0 + timedelta(seconds=10)
    assert tick(ctx, clock) == 0
    clock.advance(10.4)  # the tick is late; the slot is still the schedule's own time
    assert tick(ctx, clock) == 1
    assert tick(ctx, clock) == 0  # a second tick at the same time writes nothing again
    clock.advance(21)
    assert tick(ctx, clock) == 2
    assert slots_of("every-10s") == [T0 + timedelta(seconds=s) for s in (10, 20, 30)]
    tasks = db.session.scalars(select(AsyncTask).order_by(AsyncTask.id)).all()
    assert [(t.task_type, t.payload, t.created_by) for t in tasks] == [("NOOP", {"n": 1}, "schedule:every-10s")] * 3
    runs = db.session.scalars(select(ScheduleRun).order_by(ScheduleRun.slot_at)).all()
    assert [run.task_id for run in runs] == [task.id for task in tasks]


def test_a_slot_already_written_by_a_peer_is_not_written_again(ctx: Flask) -> None:
    clock = Clock(T0)
    new_schedule(clock)
    clock.advance(10)
    stale = db.session.scalars(select(Schedule)).one()
    db.session.expunge(stale)
    assert tick(ctx, clock) == 1
    # A peer that read the schedule before our commit tries the same slot: nothing is written.
    writer = SlotWriter(clock=clock)
    writer.begin_write()
    assert writer.fire_scheduled(stale, T0 + timedelta(seconds=10), RunKind.SCHEDULED, T0 + timedelta(seconds=20)) is False
    assert db.session.scalar(select(func.count()).select_from(AsyncTask)) == 1
    assert len(slots_of("every-10s")) == 1


@pytest.mark.parametrize(("policy", "expected_missed"), [("none", 0), ("latest", 1), ("all", 6)])
def test_catch_up_after_a_minute_of_downtime(ctx: Flask, policy: str, expected_missed: int) -> None:
    clock = Clock(T0)
    new_schedule(clock, catch_up=policy)
    clock.advance(10)
    assert tick(ctx, clock) == 1  # slot +10
    # The scheduler stops for a minute (and a half): slots +20 ... +100 come and go.
    clock.advance(90)  # now +100; grace 30 s: +20..+60 are missed, +70..+100 are on time
    written = tick(ctx, clock)
    ran, skipped = seconds_of_runs("every-10s")
    on_time = [70, 80, 90, 100]
    missed = {"none": [], "latest": [60], "all": [20, 30, 40, 50, 60]}[policy]
    assert ran == [10, *missed, *on_time]
    assert written == len(missed) + len(on_time)
    assert len(missed) == expected_missed or policy == "all"
    # The missed slots that did not run are in the history, saying why.
    assert skipped == [slot for slot in (20, 30, 40, 50, 60) if slot not in missed]
    reasons = set(db.session.scalars(select(ScheduleRun.skip_reason).where(ScheduleRun.task_id.is_(None))))
    assert reasons <= {f"missed: no scheduler ran at this time (catch-up {policy})"}
    next_fire = db.session.scalar(select(Schedule.next_fire_at))
    assert next_fire == T0 + timedelta(seconds=110)


def test_catch_up_all_is_capped_at_the_most_recent_slots(ctx: Flask) -> None:
    clock = Clock(T0)
    new_schedule(clock, catch_up="all")
    clock.advance(10 + 600)  # ten minutes down: +10 .. +570 missed, +580 .. +610 within the grace
    tick(ctx, clock, limit=5)
    ran, skipped = seconds_of_runs("every-10s")
    assert ran == [530, 540, 550, 560, 570, 580, 590, 600, 610]
    assert skipped == [480, 490, 500, 510, 520]  # the most recent of the slots left out, at most the limit


def test_overlap_policies_with_a_previous_task_still_waiting(ctx: Flask) -> None:
    clock = Clock(T0)
    for policy in ("allow", "skip", "cancel_previous"):
        new_schedule(clock, name=f"o-{policy}", overlap=policy)
    clock.advance(10)
    tick(ctx, clock)
    clock.advance(10)
    tick(ctx, clock)  # nothing consumes: every first task is still PENDING
    runs = {name: db.session.execute(
        select(ScheduleRun.skip_reason, AsyncTask.status).join(Schedule, Schedule.id == ScheduleRun.schedule_id)
        .outerjoin(AsyncTask, AsyncTask.id == ScheduleRun.task_id)
        .where(Schedule.name == name).order_by(ScheduleRun.slot_at)).all() for name in ("o-allow", "o-skip",
                                                                                      "o-cancel_previous")}
    assert [status for _, status in runs["o-allow"]] == ["PENDING", "PENDING"]
    assert runs["o-skip"][0] == (None, "PENDING")
    assert runs["o-skip"][1][1] is None and "has not finished" in runs["o-skip"][1][0]
    assert [status for _, status in runs["o-cancel_previous"]] == ["CANCELLED", "PENDING"]


# -- daylight saving ---------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "day", "expected_utc"), [
    # Spring forward (29 March 2026, 02:00 -> 03:00): 02:30 does not exist; fires once, at 03:30 CEST.
    (datetime(2026, 3, 27, 12, tzinfo=UTC), "2026-03-29", datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    # Fall back (25 October 2026, 03:00 -> 02:00): 02:30 happens twice; fires once, the first time.
    (datetime(2026, 10, 23, 12, tzinfo=UTC), "2026-10-25", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
])
def test_daily_0230_in_berlin_fires_once_on_dst_days(ctx: Flask, start: datetime, day: str,
                                                    expected_utc: datetime) -> None:
    clock = Clock(start)
    service(clock).create({"name": "nightly", "task_type": "NOOP", "cron": "30 2 * * *",
                           "timezone": "Europe/Berlin"})
    for _ in range(5):  # the clock jumps to each fire time in turn
        clock.now = db.session.scalar(select(Schedule.next_fire_at))
        db.session.rollback()
        assert tick(ctx, clock) == 1
    slots = slots_of("nightly")
    berlin = [slot.astimezone(ZONE) for slot in slots]
    on_day = [slot for slot, local in zip(slots, berlin, strict=True) if local.date().isoformat() == day]
    assert on_day == [expected_utc]
    assert len(slots) == 5 and len({local.date() for local in berlin}) == 5


# -- edits, pause, run now, backfill, delete --------------------------------------------------


def test_an_edit_between_read_and_write_wins_over_the_scheduler(ctx: Flask) -> None:
    clock = Clock(T0)
    new_schedule(clock, payload={"v": 1})
    clock.advance(10)
    stale = db.session.scalars(select(Schedule)).one()
    db.session.expunge(stale)
    service(clock).update("every-10s", {"payload": {"v": 2}, "interval_seconds": 30}, actor="tester")
    writer = SlotWriter(clock=clock)
    writer.begin_write()
    # The scheduler computed the slot from version 1: its write touches nothing and rolls back.
    assert writer.fire_scheduled(stale, stale.next_fire_at, RunKind.SCHEDULED, T0 + timedelta(seconds=20)) is False
    assert db.session.scalar(select(func.count()).select_from(AsyncTask)) == 0
    clock.advance(40)
    tick(ctx, clock)
    assert [t.payload for t in db.session.scalars(select(AsyncTask))] == [{"v": 2}]
    assert slots_of("every-10s") == [T0 + timedelta(seconds=30)]  # anchor T0, every 30 s


def test_pause_resume_run_now_backfill_delete_are_audited(ctx: Flask) -> None:
    clock = Clock(T0)
    new_schedule(clock)
    svc = service(clock)
    svc.set_enabled("every-10s", False, actor="tester")
    clock.advance(100)
    assert tick(ctx, clock) == 0
    resumed = svc.set_enabled("every-10s", True, actor="tester")
    assert resumed.next_fire_at == T0 + timedelta(seconds=110)  # paused slots are not caught up
    view = svc.run_now("every-10s", actor="tester")
    assert view.run.kind == "manual" and view.outcome == "PENDING"
    preview = svc.backfill_slots("every-10s", "2026-06-01T12:00:20Z", "2026-06-01T12:00:50Z")
    assert [int((slot - T0).total_seconds()) for slot in preview] == [20, 30, 40, 50]
    made = svc.backfill("every-10s", "2026-06-01T12:00:20Z", "2026-06-01T12:00:50Z", actor="tester")
    assert len(made) == 4 and all(view.run.kind == "backfill" for view in made)
    assert svc.backfill_slots("every-10s", "2026-06-01T12:00:20Z", "2026-06-01T12:00:50Z") == []
    with pytest.raises(ValidationError) as caught:
        svc.backfill_slots("every-10s", "2026-06-01T12:00:20Z", "2099-01-01T00:00:00Z")
    assert caught.value.field == "end"
    svc.delete("every-10s", actor="tester")
    with pytest.raises(ScheduleNotFound):
        svc.get("every-10s")
    assert db.session.scalar(select(func.count()).select_from(AsyncTask)) == 5  # the tasks stay
    actions = db.session.scalars(select(AuditEntry.action).where(AuditEntry.target_type == "schedule")
                                 .order_by(AuditEntry.id)).all()
    assert actions == ["schedule.create", "schedule.pause", "schedule.resume", "schedule.manual",
                       *["schedule.backfill"] * 4, "schedule.delete"]


def test_declared_schedules_are_upserted_and_refuse_edits(make_app: Any, backend: str) -> None:
    declared = [{"name": "from-config", "task-type": "NOOP", "every": 60, "payload": {"a": 1}}]
    app = make_app(backend, ASYNC_TASK_SCHEDULES=declared)
    with app.app_context():
        clear_schedules()
        app.extensions["schedules"].sync()
        svc = ScheduleService()
        schedule = svc.get("from-config")
        assert (schedule.source, schedule.interval_seconds, schedule.payload) == ("config", 60, {"a": 1})
        with pytest.raises(StaticScheduleRefused) as caught:
            svc.update("from-config", {"interval_seconds": 5})
        assert "ASYNC_TASK_SCHEDULES" in caught.value.message
        with pytest.raises(StaticScheduleRefused):
            svc.delete("from-config")
        svc.set_enabled("from-config", False, actor="tester")  # pausing is allowed
        app.extensions["schedules"].sync()  # a restart keeps the pause
        assert svc.get("from-config").enabled is False


def test_a_slot_whose_task_is_refused_records_why(ctx: Flask) -> None:
    clock = Clock(T0)
    new_schedule(clock, task_type="SLEEP", payload={"seconds": 1})
    # The processor's payload type changed under a stored schedule (here: the row edited directly).
    db.session.execute(text("UPDATE schedule SET payload = :payload"), {"payload": '{"seconds": "slow"}'})
    db.session.commit()
    clock.advance(10)
    assert tick(ctx, clock) == 1
    run = db.session.scalars(select(ScheduleRun)).one()
    assert run.task_id is None and run.skip_reason is not None and "payload" in run.skip_reason
    assert db.session.scalar(select(func.count()).select_from(AsyncTask)) == 0
    assert db.session.scalar(select(Schedule.next_fire_at)) == T0 + timedelta(seconds=20)
