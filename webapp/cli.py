"""``flask tasks ...`` commands: a thin front end over ``AsyncTaskService``."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .api.cli import tokens_cli
from .console.cli import users_cli
from .tasks.consumer import Consumer
from .tasks.errors import TaskError
from .tasks.models import TERMINAL_STATUSES
from .tasks.serialize import task_to_dict
from .tasks.service import AsyncTaskService, TaskFilter, validate_status
from .workflows.cli import workflows_cli

tasks_cli = AppGroup("tasks", help="Submit, inspect and process tasks.")


def _fail(message: str) -> None:
    """One-line reason on stderr and a non-zero exit."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _parse_json_object(text: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{name} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        _fail(f"{name} must be a JSON object")
    return value


@tasks_cli.command("worker")
@click.option("--concurrency", type=click.IntRange(1, 512), help="Worker threads (default from config).")
@click.option("--batch-size", type=click.IntRange(1, 10_000), help="Tasks claimed per poll.")
@click.option("--poll-interval", type=click.FloatRange(0.001, 3600), help="Seconds between polls.")
@click.option("--type", "task_types", multiple=True, help="Only claim these task types (repeatable).")
def worker_command(concurrency: int | None, batch_size: int | None, poll_interval: float | None,
                   task_types: tuple[str, ...]) -> None:
    """Run a consumer in the foreground until SIGTERM or SIGINT (graceful stop)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    registry = app.extensions["async_task"].registry
    unknown = [t for t in task_types if t not in registry]
    if unknown:
        _fail(f"unknown task type {unknown[0]!r}; registered: {', '.join(registry.task_types()) or 'none'}")
    if not len(registry):
        _fail("no task processors registered; set ASYNC_TASK_PROCESSORS")
    consumer = Consumer(app, concurrency=concurrency, batch_size=batch_size, poll_interval=poll_interval,
                        task_types=list(task_types) or None)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        click.echo(f"received {signal.Signals(signum).name}: finishing running tasks", err=True)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    consumer.start()
    click.echo(f"worker {consumer.worker_id} running {', '.join(registry.task_types())}", err=True)
    while not done.wait(0.5):
        pass
    released = consumer.stop()
    click.echo(f"worker {consumer.worker_id} stopped; released {len(released)} task(s)", err=True)


@tasks_cli.command("submit")
@click.argument("task_type")
@click.option("--payload", default="{}", show_default=True, help="JSON object.")
@click.option("--priority", help="Integer; larger runs first.")
@click.option("--created-by", help="Creator (an email address gets a notification).")
@click.option("--run-at", help="ISO-8601 time with a zone, e.g. 2026-01-01T12:00:00Z.")
def submit_command(task_type: str, payload: str, priority: str | None, created_by: str | None,
                   run_at: str | None) -> None:
    """Queue a task; prints the new task's id as the last line."""
    data = _parse_json_object(payload, "--payload")
    parsed_priority: int | None = None
    if priority is not None:
        try:
            parsed_priority = int(priority)
        except ValueError:
            _fail(f"--priority must be an integer, got {priority!r}")
    try:
        task = AsyncTaskService().submit_task(task_type, data, parsed_priority, created_by, run_at,
                                              principal="cli")
    except TaskError as exc:
        _fail(exc.message)
    click.echo(task.id)


@tasks_cli.command("show")
@click.argument("task_id")
def show_command(task_id: str) -> None:
    """Print one task as JSON."""
    try:
        task = AsyncTaskService().require_task(task_id)
    except TaskError as exc:
        _fail(exc.message)
    click.echo(json.dumps(task_to_dict(task), indent=2, ensure_ascii=False))


@tasks_cli.command("list")
@click.option("--type", "task_type", help="Only this task type.")
@click.option("--status", help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
def list_command(task_type: str | None, status: str | None, limit: int) -> None:
    """List tasks, newest first: id, type, status, priority, created_at."""
    try:
        statuses = (validate_status(status.upper()),) if status else ()
        page = AsyncTaskService().list_tasks(TaskFilter(task_type=task_type, statuses=statuses), limit)
    except TaskError as exc:
        _fail(exc.message)
    for task in page.items:
        click.echo(f"{task.id}\t{task.task_type}\t{task.status}\t{task.priority}\t{task.created_at.isoformat()}")


@tasks_cli.command("cancel")
@click.argument("task_id")
def cancel_command(task_id: str) -> None:
    """Cancel a PENDING or RETRYING task."""
    try:
        task = AsyncTaskService().cancel_task(task_id, actor="cli")
    except TaskError as exc:
        _fail(exc.message)
    click.echo(f"task {task.id} {task.status}")


@tasks_cli.command("retry")
@click.argument("task_id")
def retry_command(task_id: str) -> None:
    """Send a FAILURE task back to PENDING."""
    try:
        task = AsyncTaskService().retry_task(task_id, actor="cli")
    except TaskError as exc:
        _fail(exc.message)
    click.echo(f"task {task.id} {task.status}")


@tasks_cli.command("purge")
@click.option("--finished-before", required=True, help="ISO-8601 time with a zone, e.g. 2026-01-01T00:00:00Z.")
@click.option("--status", "statuses", multiple=True,
              help="SUCCESS, FAILURE or CANCELLED (repeatable; default all three).")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=1000, show_default=True)
def purge_command(finished_before: str, statuses: tuple[str, ...], batch_size: int) -> None:
    """Delete finished tasks older than a time, with their history, in batches."""
    try:
        deleted = AsyncTaskService().purge_finished(
            finished_before, [s.upper() for s in statuses] or TERMINAL_STATUSES, batch_size, actor="cli")
    except TaskError as exc:
        _fail(exc.message)
    click.echo(f"purged {deleted} task(s)")


def register_cli(app: Flask) -> None:
    """``flask tasks``, plus ``flask users`` and ``flask tokens`` from the console and the API."""
    app.cli.add_command(tasks_cli)
    app.cli.add_command(workflows_cli)  # flask workflows … (docs/workflows.md)
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
