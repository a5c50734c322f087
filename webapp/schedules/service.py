"""``ScheduleService``: every change to a schedule goes through here, validated and audited.

Console, API and CLI call these methods; none of them writes SQL. Creating tasks for slots is
the runner's job (``runner.py``); "run now" and backfill use the same slot writer, so a manual
run is a run record like any other (unique on schedule and slot time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..tasks.audit import record_audit
from ..tasks.dbsession import SessionWriter
from ..tasks.errors import ValidationError
from ..tasks.models import AsyncTask
from ..tasks.registry import ProcessorRegistry
from .definition import FIELDS, ScheduleDefinition, parse_moment, validate_definition
from .describe import describe
from .errors import DuplicateScheduleName, ScheduleNotFound, StaticScheduleRefused
from .models import RunKind, Schedule, ScheduleRun, ScheduleSource
from .slots import RunView, SlotWriter, current_registry

PREVIEW_FIRES = 5
MAX_BACKFILL_SLOTS = 1000
RUN_STRIP_LENGTH = 20


@dataclass
class Preview:
    """What a definition would do: its reading and next fire times, or the field error."""

    reading: str = ""
    fires: list[datetime] | None = None
    error: str | None = None
    field: str | None = None


class ScheduleService(SessionWriter):
    """Create, edit, pause, resume, delete, run now, backfill and read schedules."""

    def __init__(self, session: Session | None = None, registry: ProcessorRegistry | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(session)
        self.registry = registry or current_registry()
        self.clock = clock  # tests: a fixed clock instead of the database's

    # -- reads -------------------------------------------------------------------------------

    def list_schedules(self) -> list[Schedule]:
        """Every schedule by name."""
        return list(self.session.scalars(select(Schedule).order_by(Schedule.name)))

    def get(self, name: str) -> Schedule:
        """The schedule with that name, or ScheduleNotFound."""
        schedule = self.session.scalars(select(Schedule).where(Schedule.name == name)).first()
        if schedule is None:
            raise ScheduleNotFound(f"schedule {name!r} does not exist")
        return schedule

    def runs(self, name: str, limit: int = 50, before: datetime | None = None) -> list[RunView]:
        """A schedule's runs, newest slot first, with their tasks' statuses."""
        schedule = self.get(name)
        query = (select(ScheduleRun, AsyncTask.status)
                 .outerjoin(AsyncTask, AsyncTask.id == ScheduleRun.task_id)
                 .where(ScheduleRun.schedule_id == schedule.id)
                 .order_by(ScheduleRun.slot_at.desc()).limit(limit))
        if before is not None:
            query = query.where(ScheduleRun.slot_at < before)
        return [RunView(run, status) for run, status in self.session.execute(query)]

    def recent_runs(self, schedule_ids: list[int], per_schedule: int = RUN_STRIP_LENGTH) -> dict[int, list[RunView]]:
        """The last ``per_schedule`` runs of each schedule (oldest first), in one query."""
        if not schedule_ids:
            return {}
        ranked = (select(ScheduleRun.id.label("run_id"),
                         func.row_number().over(partition_by=ScheduleRun.schedule_id,
                                                order_by=ScheduleRun.slot_at.desc()).label("position"))
                  .where(ScheduleRun.schedule_id.in_(schedule_ids)).subquery())
        query = (select(ScheduleRun, AsyncTask.status)
                 .join(ranked, ranked.c.run_id == ScheduleRun.id)
                 .outerjoin(AsyncTask, AsyncTask.id == ScheduleRun.task_id)
                 .where(ranked.c.position <= per_schedule)
                 .order_by(ScheduleRun.schedule_id, ScheduleRun.slot_at))
        found: dict[int, list[RunView]] = {schedule_id: [] for schedule_id in schedule_ids}
        for run, status in self.session.execute(query):
            found[run.schedule_id].append(RunView(run, status))
        return found

    def preview(self, raw: Mapping[str, Any], language: str = "en", count: int = PREVIEW_FIRES) -> Preview:
        """The reading and next ``count`` fire times of a definition being typed, or its first error."""
        values = {key: raw.get(key) for key in FIELDS if key in raw}
        values.setdefault("name", "preview")
        values.setdefault("task_type", next(iter(self.registry.task_types()), ""))
        try:
            definition = validate_definition(values, self.registry)
        except ValidationError as exc:
            return Preview(error=exc.message, field=exc.field)
        now = self.db_now()
        fires = definition.recurrence(now).upcoming(now, count)
        reading = describe(definition.cron, definition.interval_seconds, definition.timezone, language)
        return Preview(reading=reading, fires=fires)

    def reading(self, schedule: Schedule, language: str = "en") -> str:
        """The plain-language reading of a stored schedule."""
        return describe(schedule.cron, schedule.interval_seconds, schedule.timezone, language)

    def db_now(self) -> datetime:
        """Now by the database's clock (see ``AsyncTaskService.db_now``)."""
        return self.slot_writer().db_now()

    def slot_writer(self) -> SlotWriter:
        """The writer of run records and their tasks, on this service's session and clock."""
        return SlotWriter(self.session, self.registry, self.clock)

    # -- changes -----------------------------------------------------------------------------

    def create(self, raw: Mapping[str, Any], actor: str | None = None) -> Schedule:
        """A new (dynamic) schedule; a taken name is refused naming ``name``."""
        definition = validate_definition(raw, self.registry)
        self.session.rollback()
        self.begin_write()
        if self.session.scalars(select(Schedule.id).where(Schedule.name == definition.name)).first() is not None:
            self.session.rollback()
            raise DuplicateScheduleName(f"a schedule named {definition.name!r} already exists", field="name")
        schedule = self._insert(definition, ScheduleSource.DYNAMIC.value, None, actor)
        record_audit(actor, "schedule.create", "schedule", definition.name, session=self.session,
                     detail=_audit_detail(definition))
        return self._commit(schedule, definition.name)

    def _insert(self, definition: ScheduleDefinition, source: str, declared_in: str | None,
                actor: str | None) -> Schedule:
        now = self.db_now()
        schedule = Schedule(**definition.columns(), source=source, declared_in=declared_in,
                            anchor_at=definition.start_at or now.replace(microsecond=0), version=1,
                            created_at=now, updated_at=now, updated_by=actor)
        schedule.next_fire_at = definition.recurrence(schedule.anchor_at).next_after(now)
        self.session.add(schedule)
        return schedule

    def _commit(self, schedule: Schedule, name: str) -> Schedule:
        try:
            self.session.flush()
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            raise DuplicateScheduleName(f"a schedule named {name!r} already exists", field="name") from None
        return self.get(name)

    def update(self, name: str, changes: Mapping[str, Any], actor: str | None = None) -> Schedule:
        """Change some fields of a dynamic schedule; the next slots follow the new definition."""
        self.session.rollback()
        schedule = self.get(name)
        self._refuse_static(schedule, "edited")
        current = {key: getattr(schedule, key) for key in FIELDS}
        merged = {**current, **changes}
        # Switching between cron and interval: giving one clears the other.
        if changes.get("cron") not in (None, "") and "interval_seconds" not in changes:
            merged["interval_seconds"] = None
        if changes.get("interval_seconds") not in (None, "") and "cron" not in changes:
            merged["cron"] = None
        definition = validate_definition(merged, self.registry)
        if definition.name != name and self.session.scalars(
                select(Schedule.id).where(Schedule.name == definition.name)).first() is not None:
            raise DuplicateScheduleName(f"a schedule named {definition.name!r} already exists", field="name")
        self.session.rollback()
        self.begin_write()
        schedule = self.get(name)
        self._apply(schedule, definition, actor)
        record_audit(actor, "schedule.update", "schedule", name, session=self.session,
                     detail={"changed": sorted(key for key in changes if key in FIELDS)})
        return self._commit(schedule, definition.name)

    def _apply(self, schedule: Schedule, definition: ScheduleDefinition, actor: str | None) -> None:
        """Write a new definition: a new version, and the next fire from now by the new rules."""
        now = self.db_now()
        for key, value in definition.columns().items():
            setattr(schedule, key, value)
        if definition.start_at is not None:
            schedule.anchor_at = definition.start_at
        schedule.version += 1
        schedule.updated_at = now
        schedule.updated_by = actor
        schedule.next_fire_at = definition.recurrence(schedule.anchor_at).next_after(now)

    def set_enabled(self, name: str, enabled: bool, actor: str | None = None) -> Schedule:
        """Pause (no slot fires, none is caught up later) or resume (from the next slot after now)."""
        self.session.rollback()
        self.begin_write()
        schedule = self.get(name)
        if schedule.enabled != enabled:
            schedule.enabled = enabled
            schedule.version += 1
            now = self.db_now()
            schedule.updated_at = now
            schedule.updated_by = actor
            if enabled:
                schedule.next_fire_at = schedule.recurrence().next_after(now)
        record_audit(actor, "schedule.resume" if enabled else "schedule.pause", "schedule", name,
                     session=self.session)
        self.session.commit()
        return self.get(name)

    def delete(self, name: str, actor: str | None = None) -> None:
        """Delete a dynamic schedule and its run records (its tasks stay)."""
        self.session.rollback()
        self.begin_write()
        schedule = self.get(name)
        self._refuse_static(schedule, "deleted")
        self.session.delete(schedule)
        record_audit(actor, "schedule.delete", "schedule", name, session=self.session)
        self.session.commit()

    def _refuse_static(self, schedule: Schedule, verb: str) -> None:
        if schedule.is_static:
            self.session.rollback()
            raise StaticScheduleRefused(
                f"schedule {schedule.name!r} is declared in {schedule.declared_in} and cannot be {verb} here; "
                f"change it there (it may still be paused and resumed)")

    def run_now(self, name: str, actor: str | None = None) -> RunView:
        """A task for this schedule at once, recorded as a manual run (overlap policy applies)."""
        self.session.rollback()
        schedule = self.get(name)
        writer = self.slot_writer()
        runs = writer.fire_manual(schedule.id, RunKind.MANUAL, [writer.db_now()], actor)
        if not runs:
            raise ScheduleNotFound(f"schedule {name!r} does not exist")
        return runs[0]

    def backfill_slots(self, name: str, start: Any, end: Any) -> list[datetime]:
        """The slots in ``[start, end]`` that have no run yet: what ``backfill`` would create."""
        schedule = self.get(name)
        begin, finish = self._backfill_range(start, end)
        recurrence = schedule.recurrence()
        slots = recurrence.fires(begin, finish, MAX_BACKFILL_SLOTS + 1)
        upper = recurrence.next_at_or_after(finish)
        if upper == finish and len(slots) <= MAX_BACKFILL_SLOTS:
            slots.append(upper)  # the range is inclusive at both ends
        if len(slots) > MAX_BACKFILL_SLOTS:
            raise ValidationError(f"the range holds more than {MAX_BACKFILL_SLOTS} slots; choose a shorter one",
                                  field="end")
        taken = set(self.session.scalars(select(ScheduleRun.slot_at).where(
            ScheduleRun.schedule_id == schedule.id, ScheduleRun.slot_at.in_(slots)))) if slots else set()
        return [slot for slot in slots if slot not in taken]

    def _backfill_range(self, start: Any, end: Any) -> tuple[datetime, datetime]:
        begin = parse_moment(start, "start")
        finish = parse_moment(end, "end")
        if begin is None:
            raise ValidationError("start is required", field="start")
        if finish is None:
            raise ValidationError("end is required", field="end")
        if finish < begin:
            raise ValidationError("end must not be before start", field="end")
        if finish > self.db_now():
            raise ValidationError("end must not be in the future: backfill fills past slots", field="end")
        return begin, finish

    def backfill(self, name: str, start: Any, end: Any, actor: str | None = None) -> list[RunView]:
        """One task per slot in ``[start, end]`` that has none yet, each recorded as a backfill run."""
        slots = self.backfill_slots(name, start, end)
        schedule = self.get(name)
        self.session.rollback()
        return self.slot_writer().fire_manual(schedule.id, RunKind.BACKFILL, slots, actor)

    def sync_declared(self, declarations: list[Any]) -> None:
        """Upsert the schedules declared in code and configuration; drop static ones no longer declared.

        Paused stays paused: an operator's pause survives restarts. Safe to run in every process
        at once (each upsert is its own transaction; a lost insert race re-reads the winner's row).
        """
        names = set()
        for declaration in declarations:
            names.add(declaration.definition.name)
            self._upsert_declared(declaration)
        self.session.rollback()
        self.begin_write()
        stale = self.session.scalars(select(Schedule).where(
            Schedule.source != ScheduleSource.DYNAMIC.value, Schedule.name.not_in(names or {""}))).all()
        for schedule in stale:
            self.session.delete(schedule)
            record_audit("system", "schedule.undeclared", "schedule", schedule.name, session=self.session,
                         detail={"declared_in": schedule.declared_in})
        self.session.commit()

    def _upsert_declared(self, declaration: Any) -> None:
        definition: ScheduleDefinition = declaration.definition
        for _ in range(3):
            self.session.rollback()
            self.begin_write()
            schedule = self.session.scalars(select(Schedule).where(Schedule.name == definition.name)).first()
            if schedule is None:
                self._insert(definition, declaration.source, declaration.declared_in, "system")
            else:
                wanted = {**definition.columns(), "enabled": schedule.enabled}
                current = {key: getattr(schedule, key) for key in wanted}
                if current == wanted and (schedule.source, schedule.declared_in) == (
                        declaration.source, declaration.declared_in):
                    self.session.rollback()
                    return
                schedule.source, schedule.declared_in = declaration.source, declaration.declared_in
                enabled = schedule.enabled
                self._apply(schedule, definition, "system")
                schedule.enabled = enabled
            try:
                self.session.commit()
                return
            except IntegrityError:
                self.session.rollback()  # another process inserted it first: compare with theirs


def _audit_detail(definition: ScheduleDefinition) -> dict[str, Any]:
    return {"task_type": definition.task_type, "cron": definition.cron,
            "interval_seconds": definition.interval_seconds, "timezone": definition.timezone}
