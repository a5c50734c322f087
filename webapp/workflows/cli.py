"""``flask workflows …``: submit a workflow from a JSON file, list, show, cancel, retry.

A thin front end over ``AsyncTaskService`` and ``workflows.queries``; the file holds the same
object ``POST /api/workflows`` takes. Errors print one line naming the field and exit 1.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from flask.cli import AppGroup

from ..tasks.errors import TaskError
from ..tasks.service import AsyncTaskService
from .queries import list_workflows, workflow_detail
from .serialize import workflow_detail_to_dict

workflows_cli = AppGroup("workflows", help="Submit, inspect, cancel and retry workflows.")
ACTOR = "cli"
FILE_FIELDS = ("name", "on_failure", "tasks", "callbacks", "created_by")


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _show_error(exc: TaskError) -> None:
    _fail(f"{exc.field}: {exc.message}" if exc.field else exc.message)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            body = json.load(handle)
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        _fail(f"{path} is not valid JSON: {exc}")
    if not isinstance(body, dict):
        _fail(f"{path} must hold a JSON object with 'tasks'")
    unknown = sorted(set(body) - set(FILE_FIELDS))
    if unknown:
        _fail(f"{unknown[0]}: unknown field (expected {', '.join(FILE_FIELDS)})")
    return body


@workflows_cli.command("submit")
@click.argument("path", type=click.Path(dir_okay=False))
def submit_command(path: str) -> None:
    """Submit the workflow in PATH (JSON, as POST /api/workflows takes); prints its id and task ids."""
    body = _read_file(path)
    try:
        submitted = AsyncTaskService().submit_workflow(
            tasks=body.get("tasks"), name=body.get("name"), on_failure=body.get("on_failure") or "cancel_dependents",
            callbacks=body.get("callbacks"), principal=ACTOR, created_by=body.get("created_by"))
    except TaskError as exc:
        _show_error(exc)
    click.echo(json.dumps({"id": submitted.workflow_id, "task_ids": submitted.task_ids}))


@workflows_cli.command("list")
@click.option("--status", help="RUNNING, SUCCEEDED, FAILED or CANCELLED.")
@click.option("--name", help="Only workflows with exactly this name.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
def list_command(status: str | None, name: str | None, limit: int) -> None:
    """Workflows, newest first: id, status, progress, name."""
    try:
        page = list_workflows(AsyncTaskService().session, status=status, name=name, limit=limit)
    except TaskError as exc:
        _show_error(exc)
    for workflow in page.items:
        click.echo(f"{workflow.id:>8}  {workflow.status:<9}  {workflow.ended:>6} / {workflow.task_count:<6} done"
                   f"  {workflow.name or '-'}")


@workflows_cli.command("show")
@click.argument("workflow_id")
def show_command(workflow_id: str) -> None:
    """A workflow as JSON: status, counts, tasks with keys, statuses and what they wait for."""
    try:
        detail = workflow_detail(AsyncTaskService().session, workflow_id)
    except TaskError as exc:
        _show_error(exc)
    click.echo(json.dumps(workflow_detail_to_dict(detail), indent=2))


@workflows_cli.command("cancel")
@click.argument("workflow_id")
def cancel_command(workflow_id: str) -> None:
    """Cancel every task of the workflow that has not started."""
    try:
        cancelled = AsyncTaskService().cancel_workflow(workflow_id, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    click.echo(f"workflow {workflow_id}: {cancelled} task(s) cancelled")


@workflows_cli.command("retry")
@click.argument("workflow_id")
def retry_command(workflow_id: str) -> None:
    """Retry a failed (or cancelled) workflow: its failed and cancelled tasks run again."""
    try:
        retried = AsyncTaskService().retry_workflow(workflow_id, actor=ACTOR)
    except TaskError as exc:
        _show_error(exc)
    click.echo(f"workflow {workflow_id}: {retried} task(s) retried")
