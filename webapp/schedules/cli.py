"""``flask schedules ...``: a thin front end over ``ScheduleService``."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

import click
from flask.cli import AppGroup

from ..tasks.errors import TaskError
from .models import CatchUpPolicy, OverlapPolicy, Schedule
from .service import ScheduleService
from .slots import RunView

schedules_cli = AppGroup("schedules", help="Create, inspect and run recurring schedules.")
ACTOR = "cli"


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _iso(moment: datetime | None) -> str:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else "-"


def _show_error(exc: TaskError) -> None:
    _fail(f"{exc.field}: {exc.message}" if exc.field else exc.message)


def _expression(schedule: Schedule) -> str:
    return schedule.cron if schedule.cron is not None else f"every {schedule.interval_seconds}s"


def _print_run(view: RunView) -> None:
    run = view.run
    task = f"task {run.task_id}" if run.task_id is not None else run.skip_reason or "-"
    click.echo(f"{_iso(run.slot_at)}  {run.kind:<9}  {view.outcome:<10}  {task}")


@schedules_cli.command("create")
@click.argument("name")
@click.option("--task-type", required=True, help="Registered task type the schedule submits.")
@click.option("--cron", help="5-field cron expression or @hourly, @daily, @weekly, @monthly, @yearly.")
@click.option("--every", "every", help="Interval in whole seconds (at least 1).")
@click.option("--timezone", default="UTC", show_default=True, help="IANA zone the cron is read in.")
@click.option("--payload", default="{}", show_default=True, help="JSON object given to each task.")
@click.option("--priority", help="Integer; larger runs first (default: the processor's).")
@click.option("--overlap", type=click.Choice([p.value for p in OverlapPolicy]), default="allow", show_default=True)
@click.option("--catch-up", "catch_up", type=click.Choice([p.value for p in CatchUpPolicy]), default="none",
              show_default=True)
@click.option("--description", default="", help="Free text shown in the console.")
@click.option("--start", "start_at", help="ISO-8601 time the schedule starts (with a zone).")
@click.option("--end", "end_at", help="ISO-8601 time after which it no longer fires.")
@click.option("--created-by", help="Creator of its tasks (an email address gets notifications).")
def create_command(name: str, task_type: str, cron: str | None, every: str | None, timezone: str, payload: str,
                   priority: str | None, overlap: str, catch_up: str, description: str, start_at: str | None,
                   end_at: str | None, created_by: str | None) -> None:
    """Create a schedule (exactly one of --cron and --every)."""
    if (cron is None) == (every is None):
        _fail("give exactly one of --cron and --every")
    try:
        data: Any = json.loads(payload)
    except json.JSONDecodeError as exc:
        _fail(f"payload: not valid JSON: {exc}")
    raw = {"name": name, "task_type": task_type, "cron": cron, "interval_seconds": every, "timezone": timezone,
           "payload": data, "priority": priority, "overlap": overlap, "catch_up": catch_up,
           "description": description, "start_at": start_at, "end_at": end_at, "created_by": created_by}
    try:
        schedule = ScheduleService().create(raw, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    click.echo(f"created schedule {schedule.name}: {ScheduleService().reading(schedule)}; "
               f"next fire {_iso(schedule.next_fire_at)}")


@schedules_cli.command("list")
def list_command() -> None:
    """Every schedule: name, expression, zone, state, next fire (UTC)."""
    for schedule in ScheduleService().list_schedules():
        state = "enabled" if schedule.enabled else "paused"
        click.echo(f"{schedule.name:<30} {_expression(schedule):<20} {schedule.timezone:<18} {state:<8} "
                   f"{schedule.source:<9} next {_iso(schedule.next_fire_at)}")


@schedules_cli.command("show")
@click.argument("name")
def show_command(name: str) -> None:
    """One schedule's definition, next fire times and latest runs."""
    service = ScheduleService()
    try:
        schedule = service.get(name)
        runs = service.runs(name, limit=20)
    except TaskError as exc:
        _show_error(exc)
    for key in ("name", "task_type", "cron", "interval_seconds", "timezone", "payload", "priority", "created_by",
                "start_at", "end_at", "enabled", "overlap", "catch_up", "description", "source", "declared_in",
                "next_fire_at"):
        value = getattr(schedule, key)
        shown = json.dumps(value) if isinstance(value, dict) else _iso(value) if isinstance(value, datetime) else value
        click.echo(f"{key:<17} {shown}")
    click.echo(f"{'reading':<17} {service.reading(schedule)}")
    click.echo("latest runs:")
    for view in runs:
        _print_run(view)


@schedules_cli.command("pause")
@click.argument("name")
def pause_command(name: str) -> None:
    """Stop firing (slots while paused are not caught up)."""
    try:
        ScheduleService().set_enabled(name, False, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    click.echo(f"paused {name}")


@schedules_cli.command("resume")
@click.argument("name")
def resume_command(name: str) -> None:
    """Fire again from the next slot after now."""
    try:
        schedule = ScheduleService().set_enabled(name, True, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    click.echo(f"resumed {name}; next fire {_iso(schedule.next_fire_at)}")


@schedules_cli.command("run-now")
@click.argument("name")
def run_now_command(name: str) -> None:
    """Submit the schedule's task now (a manual run); prints the task id last."""
    try:
        view = ScheduleService().run_now(name, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    click.echo(f"run {_iso(view.run.slot_at)}: task {view.run.task_id or view.run.skip_reason}")


@schedules_cli.command("backfill")
@click.argument("name")
@click.option("--from", "start", required=True, help="ISO-8601 start of the range (inclusive).")
@click.option("--to", "end", required=True, help="ISO-8601 end of the range (inclusive, not in the future).")
def backfill_command(name: str, start: str, end: str) -> None:
    """One task per slot in the range that has none yet."""
    try:
        runs = ScheduleService().backfill(name, start, end, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    for view in runs:
        _print_run(view)
    click.echo(f"backfilled {len(runs)} slot(s)")


@schedules_cli.command("delete")
@click.argument("name")
def delete_command(name: str) -> None:
    """Delete a schedule created at runtime (its tasks stay)."""
    try:
        ScheduleService().delete(name, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    click.echo(f"deleted {name}")
