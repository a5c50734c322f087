"""Binds schedules to a Flask app: declared schedules checked at start, the job, the CLI group."""

from __future__ import annotations

from flask import Flask

from ..config import ConfigError
from .cli import schedules_cli
from .declarations import collect_declarations
from .runner import SchedulerJob
from .setting import CONFIG_SETTING, parse_schedules_setting


def init_schedules(app: Flask) -> SchedulerJob:
    """Check declared schedules (a bad one stops start-up naming it) and prepare the scheduler job.

    The job itself runs in every consumer (``app.extensions['schedules'].tick``); it upserts the
    declared schedules on its first run, since the schema may not exist yet when the app is built
    (``flask db upgrade`` builds one too).
    """
    registry = app.extensions["async_task"].registry
    try:
        declarations = collect_declarations(registry, parse_schedules_setting(app.config.get(CONFIG_SETTING)))
    except ValueError as exc:
        raise ConfigError(f"{CONFIG_SETTING}: {exc}") from None
    job = SchedulerJob(app, declarations)
    app.extensions["schedules"] = job
    app.cli.add_command(schedules_cli)
    return job
