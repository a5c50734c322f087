"""The scheduler job: turns due slots into tasks. Runs in every consumer, every ~1 s.

When nothing is due it costs one indexed query (the earliest ``next_fire_at`` of enabled
schedules, ``ix_schedule_due``). A due schedule is handled one slot per transaction, each step
re-reading the row inside its write transaction, so several processes working on the same
schedule agree on every step (see ``slots.py`` for why only one of them writes each slot).

Slot times come from the schedule (its cron or anchor), never from "now". After downtime the
slots older than the misfire grace (``ASYNC_TASK_SCHEDULE_MISFIRE_GRACE``) are *missed*, and
the catch-up policy says what happens to them: ``none`` skips them, ``latest`` runs the most
recent one once, ``all`` runs each (at most ``ASYNC_TASK_SCHEDULE_CATCH_UP_LIMIT``, the most
recent ones). Slots within the grace are on time and always run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..extensions import db
from ..tasks.errors import ValidationError
from ..tasks.registry import ProcessorRegistry
from .declarations import Declaration
from .models import CatchUpPolicy, RunKind, Schedule
from .service import ScheduleService
from .slots import SlotWriter
from .triggers import Recurrence

log = logging.getLogger(__name__)

DUE_BATCH = 50  # schedules handled per tick; the rest are due again at the next tick


@dataclass
class Step:
    """The next thing to do for a due schedule: fire ``slot``, or skip to ``skip_to``."""

    slot: datetime | None = None
    kind: RunKind = RunKind.SCHEDULED
    next_fire: datetime | None = None
    skip_to: datetime | None = None
    skipped: bool = False
    # The most recent of the slots skipped over (at most the catch-up limit): each gets a run
    # record saying it was missed, so the history shows the gap.
    missed: list[datetime] = field(default_factory=list)


def plan_step(schedule: Schedule, recurrence: Recurrence, now: datetime, grace: timedelta,
              catch_up_limit: int) -> Step | None:
    """What to do next for ``schedule`` at ``now``; None when nothing is due."""
    due = schedule.next_fire_at
    if due is None or due > now:
        return None
    cutoff = now - grace
    if due >= cutoff:
        return Step(slot=due, next_fire=recurrence.next_after(due))
    wanted = {CatchUpPolicy.NONE.value: 0, CatchUpPolicy.LATEST.value: 1}.get(schedule.catch_up, catch_up_limit)
    missed_to_run = recurrence.latest_before(due, cutoff, wanted)
    if not missed_to_run or missed_to_run[0] > due:
        skip_to = missed_to_run[0] if missed_to_run else recurrence.next_at_or_after(cutoff)
        missed = recurrence.latest_before(due, skip_to or cutoff, catch_up_limit)
        return Step(skipped=True, skip_to=skip_to, missed=missed)
    return Step(slot=due, kind=RunKind.CATCH_UP, next_fire=recurrence.next_after(due))


def fire_due_schedules(session: Session, registry: ProcessorRegistry, *, grace: float, catch_up_limit: int,
                       clock: Callable[[], datetime] | None = None) -> int:
    """Write every due slot of every due schedule; the number of slots this process wrote.

    ``clock`` defaults to the database clock; tests pass a fixed one.
    """
    writer = SlotWriter(session, registry, clock)
    now = writer.db_now()
    due_ids = list(session.scalars(
        select(Schedule.id).where(Schedule.enabled, Schedule.next_fire_at <= now)
        .order_by(Schedule.next_fire_at).limit(DUE_BATCH)))
    session.rollback()
    written = 0
    for schedule_id in due_ids:
        written += _fire_schedule(writer, schedule_id, now, timedelta(seconds=grace), catch_up_limit)
    return written


def _fire_schedule(writer: SlotWriter, schedule_id: int, now: datetime,
                   grace: timedelta, catch_up_limit: int) -> int:
    session = writer.session
    written = 0
    # Bounded: every step moves next_fire_at forward or ends the loop, and a peer's progress
    # only shortens the work left.
    for _ in range(catch_up_limit + 1000):
        session.rollback()
        writer.begin_write()
        schedule = session.get(Schedule, schedule_id, populate_existing=True)
        if schedule is None or not schedule.enabled:
            session.rollback()
            break
        try:
            recurrence = schedule.recurrence()
        except ValidationError as exc:  # stored before a rule got stricter: say so, leave it be
            log.warning("schedule %s cannot be evaluated: %s: %s", schedule.name, exc.field, exc.message)
            session.rollback()
            break
        step = plan_step(schedule, recurrence, now, grace, catch_up_limit)
        if step is None:
            session.rollback()
            break
        if step.skipped:
            assert schedule.next_fire_at is not None
            log.info("schedule %s: skipping missed slots from %s to %s (catch-up %s)", schedule.name,
                     schedule.next_fire_at.isoformat(), step.skip_to.isoformat() if step.skip_to else "the end",
                     schedule.catch_up)
            writer.skip_to(schedule, schedule.next_fire_at, step.skip_to, step.missed)
            continue
        assert step.slot is not None
        if writer.fire_scheduled(schedule, step.slot, step.kind, step.next_fire):
            written += 1
    session.rollback()
    return written


class SchedulerJob:
    """The consumer's ``schedules`` job: upserts declared schedules once, then fires due slots."""

    def __init__(self, app: Flask, declarations: list[Declaration]) -> None:
        self.app = app
        self.declarations = declarations
        self.interval: float = app.config["ASYNC_TASK_SCHEDULER_INTERVAL"]
        self.enabled: bool = app.config["ASYNC_TASK_SCHEDULER_ENABLED"]
        self._synced = False

    def sync(self) -> None:
        """Upsert the schedules declared in code and configuration (every process may do it)."""
        ScheduleService(db.session(), self.app.extensions["async_task"].registry).sync_declared(self.declarations)
        self._synced = True

    def tick(self, clock: Callable[[], datetime] | None = None) -> int:
        """One run of the job: the number of slots this process wrote. Never raises."""
        if not self.enabled:
            return 0
        with self.app.app_context():
            try:
                if not self._synced:
                    self.sync()
                return fire_due_schedules(
                    db.session(), self.app.extensions["async_task"].registry,
                    grace=self.app.config["ASYNC_TASK_SCHEDULE_MISFIRE_GRACE"],
                    catch_up_limit=self.app.config["ASYNC_TASK_SCHEDULE_CATCH_UP_LIMIT"], clock=clock)
            except Exception:
                log.exception("scheduler tick failed")
                return 0
            finally:
                db.session.remove()
