"""Writing one slot: its run record and its task in one transaction, exactly once.

Any number of scheduler processes may try the same slot at the same moment. Each inserts the
run record first; the unique key on (schedule, slot time) lets exactly one insert commit. On
PostgreSQL a second insert waits for the first transaction and then fails; on SQLite the writers
queue on the database's write lock (``BEGIN IMMEDIATE``) and a later one finds the run already
there. The loser rolls back (its task was never committed) and moves on: no leader, no Redis.

A scheduled slot also moves the schedule's ``next_fire_at`` on, by a conditional update that
names the version and the slot it read: an operator's edit in between (a new version) or a
faster peer (a later slot) makes it touch no row, and the whole slot is rolled back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..tasks.audit import record_audit
from ..tasks.dbsession import SessionWriter
from ..tasks.errors import TaskError, ValidationError
from ..tasks.models import AsyncTask, TaskStatus
from ..tasks.registry import ProcessorRegistry
from ..tasks.service import AsyncTaskService
from .models import OverlapPolicy, RunKind, Schedule, ScheduleRun

log = logging.getLogger(__name__)

# A slot is skipped (overlap "skip") or cancels (overlap "cancel_previous") while one of these
# tasks of the schedule exists.
UNFINISHED = (TaskStatus.PENDING.value, TaskStatus.PROCESSING.value, TaskStatus.RETRYING.value)
# Only the newest runs are searched for unfinished tasks: enough for every policy (skip keeps
# at most one running), and the search stays cheap however long the history is.
RECENT_RUNS_SEARCHED = 100


def current_registry() -> ProcessorRegistry:
    """The processor registry of the current app."""
    registry: ProcessorRegistry = current_app.extensions["async_task"].registry
    return registry


@dataclass
class RunView:
    """A run record with its task's status: the outcome shown in history and the run strip."""

    run: ScheduleRun
    task_status: str | None

    @property
    def outcome(self) -> str:
        """SKIPPED, the task's status, or PURGED when the task was deleted since."""
        if self.run.skip_reason is not None:
            return "SKIPPED"
        return self.task_status or "PURGED"


class SlotWriter(SessionWriter):
    """Inserts run records and their tasks for one schedule's slots."""

    def __init__(self, session: Session | None = None, registry: ProcessorRegistry | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(session)
        self.registry = registry or current_registry()
        self.tasks = AsyncTaskService(registry=self.registry, session=self.session)
        self.clock = clock
        # Run records written by the scheduler name the process, so a history shows who won a slot.
        self.actor = f"scheduler:{socket.gethostname()}-{os.getpid()}"

    def db_now(self) -> datetime:
        """Now by the database's clock (corrected once a minute; Python's on SQLite), or the given clock."""
        return self.clock() if self.clock is not None else self.tasks.db_now()

    def fire_scheduled(self, schedule: Schedule, slot: datetime, kind: RunKind, next_fire: datetime | None) -> bool:
        """Write ``slot`` and move ``next_fire_at`` to ``next_fire``; False when someone else did.

        ``schedule`` was read in the caller's write transaction; this commits or rolls it back.
        """
        run = self._insert_run(schedule, slot, kind, None)
        if run is None:
            return False
        to_cancel = self._apply_overlap(schedule, run)
        moved = self.session.execute(
            update(Schedule)
            .where(Schedule.id == schedule.id, Schedule.version == schedule.version,
                   Schedule.next_fire_at == slot)
            .values(next_fire_at=next_fire)
            .returning(Schedule.id)
            .execution_options(synchronize_session=False)
        ).first()
        if moved is None:
            self.session.rollback()  # edited, paused or advanced by a peer since it was read
            return False
        self._commit_slot(run)
        self._cancel_previous(schedule.name, to_cancel)
        return True

    def skip_to(self, schedule: Schedule, expected: datetime, next_fire: datetime | None,
                missed: list[datetime]) -> bool:
        """Move ``next_fire_at`` past missed slots that the catch-up policy does not run.

        ``missed`` (the most recent of them) get run records saying why they have no task;
        slots that already have a run (a backfill) are left as they are.
        """
        taken = set(self.session.scalars(select(ScheduleRun.slot_at).where(
            ScheduleRun.schedule_id == schedule.id, ScheduleRun.slot_at.in_(missed)))) if missed else set()
        now = self.db_now()
        reason = f"missed: no scheduler ran at this time (catch-up {schedule.catch_up})"
        self.session.add_all([ScheduleRun(schedule_id=schedule.id, slot_at=slot, kind=RunKind.SCHEDULED.value,
                                          skip_reason=reason, created_by=self.actor, created_at=now)
                              for slot in missed if slot not in taken])
        try:
            self.session.flush()
        except IntegrityError:
            self.session.rollback()  # a peer recorded them first; it also moved the schedule on
            return False
        moved = self.session.execute(
            update(Schedule)
            .where(Schedule.id == schedule.id, Schedule.version == schedule.version,
                   Schedule.next_fire_at == expected)
            .values(next_fire_at=next_fire)
            .returning(Schedule.id)
            .execution_options(synchronize_session=False)
        ).first()
        if moved is None:
            self.session.rollback()
            return False
        self.session.commit()
        return True

    def fire_manual(self, schedule_id: int, kind: RunKind, slots: list[datetime],
                    actor: str | None) -> list[RunView]:
        """Run now / backfill: a run and a task per slot (existing slots are left alone), audited.

        The overlap policy governs scheduled slots only: an operator asking for a run gets one.
        """
        written = []
        for slot in slots:
            self.session.rollback()
            self.begin_write()
            schedule = self.session.get(Schedule, schedule_id, populate_existing=True)
            if schedule is None:
                self.session.rollback()
                break
            run = self._insert_run(schedule, slot, kind, actor)
            if run is None:
                continue
            self._submit_task(schedule, run)
            record_audit(actor, f"schedule.{kind.value}", "schedule", schedule.name, session=self.session,
                         detail={"slot_at": slot.isoformat(), "task_id": run.task_id})
            run_id = run.id
            self._commit_slot(run)
            stored = self.session.get(ScheduleRun, run_id)
            if stored is None:  # deleted with its schedule the moment it committed
                continue
            status = (self.session.scalar(select(AsyncTask.status).where(AsyncTask.id == stored.task_id))
                      if stored.task_id is not None else None)
            written.append(RunView(stored, status))
        return written

    def _insert_run(self, schedule: Schedule, slot: datetime, kind: RunKind, actor: str | None) -> ScheduleRun | None:
        """The slot's run record, flushed; None (rolled back) when the slot already has one."""
        exists = self.session.scalar(select(ScheduleRun.id).where(
            ScheduleRun.schedule_id == schedule.id, ScheduleRun.slot_at == slot))
        if exists is not None:
            self.session.rollback()
            return None
        run = ScheduleRun(schedule_id=schedule.id, slot_at=slot, kind=kind.value, created_by=actor or self.actor,
                          created_at=self.db_now())
        self.session.add(run)
        try:
            self.session.flush()
        except IntegrityError:
            self.session.rollback()  # a peer committed this slot between our check and insert
            return None
        return run

    def _apply_overlap(self, schedule: Schedule, run: ScheduleRun) -> list[int]:
        """Skip the slot or submit its task per the overlap policy; the tasks to cancel after commit."""
        unfinished: list[int] = []
        if schedule.overlap != OverlapPolicy.ALLOW.value:
            unfinished = self._unfinished_tasks(schedule.id)
        if schedule.overlap == OverlapPolicy.SKIP.value and unfinished:
            run.skip_reason = f"overlap: task {unfinished[0]} of the previous run has not finished"
            self.session.flush()
            return []
        self._submit_task(schedule, run)
        return unfinished if schedule.overlap == OverlapPolicy.CANCEL_PREVIOUS.value else []

    def _unfinished_tasks(self, schedule_id: int) -> list[int]:
        recent = (select(ScheduleRun.task_id)
                  .where(ScheduleRun.schedule_id == schedule_id, ScheduleRun.task_id.is_not(None))
                  .order_by(ScheduleRun.slot_at.desc()).limit(RECENT_RUNS_SEARCHED).scalar_subquery())
        return list(self.session.scalars(
            select(AsyncTask.id).where(AsyncTask.id.in_(recent), AsyncTask.status.in_(UNFINISHED))
            .order_by(AsyncTask.id.desc())))

    def _submit_task(self, schedule: Schedule, run: ScheduleRun) -> None:
        """The slot's task, in the run's transaction; a refused payload is recorded as the skip reason."""
        try:
            task = self.tasks.submit(schedule.task_type, schedule.payload, schedule.priority,
                                     schedule.created_by or f"schedule:{schedule.name}", commit=False).task
        except ValidationError as exc:
            run.skip_reason = f"task refused: {exc.message}"[:500]
            self.session.flush()
            return
        run.task_id = task.id
        self.session.flush()

    def _commit_slot(self, run: ScheduleRun) -> None:
        """Commit, waking consumers in every process when a task was created."""
        created_task = run.task_id is not None
        if created_task:
            self.dialect.wake_consumers(self.session)  # other processes' consumers, at commit
        self.session.commit()
        if created_task:
            try:
                current_app.extensions["async_task"].announce_new_work()
            except Exception:  # a wake-up is an optimisation; the consumer's poll finds the task
                log.exception("could not wake this process's consumers")

    def _cancel_previous(self, name: str, task_ids: list[int]) -> None:
        """Overlap ``cancel_previous``: cancel (or ask to stop) the earlier unfinished tasks."""
        for task_id in task_ids:
            # A task that finished meanwhile has nothing left to cancel.
            with contextlib.suppress(TaskError):
                self.tasks.cancel_task(task_id, actor=f"schedule:{name}")
