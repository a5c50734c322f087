"""``flask schedules ...`` and declared schedules (a processor's defaults, ASYNC_TASK_SCHEDULES)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, text

from webapp import create_app
from webapp.config import ConfigError
from webapp.extensions import db
from webapp.schedules.models import Schedule, ScheduleRun
from webapp.schedules.service import ScheduleService
from webapp.tasks import TaskInfo, TaskProcessor, TaskResult
from webapp.tasks.models import AsyncTask


class NightlyReportProcessor(TaskProcessor):
    """A processor declaring a default schedule (loaded with ASYNC_TASK_PROCESSORS=this module)."""

    task_type = "NIGHTLY_REPORT"

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        return TaskResult.success()

    def get_schedules(self) -> list[dict[str, Any]]:
        return [{"name": "nightly-report", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
                 "payload": {"kind": "nightly"}}]


def clean(app: Flask) -> None:
    with app.app_context():
        db.session.execute(text("DELETE FROM schedule_run"))
        db.session.execute(text("DELETE FROM schedule"))
        db.session.commit()
        db.session.remove()


def test_cli_exactly_as_documented(app: Flask) -> None:
    clean(app)
    runner = app.test_cli_runner()

    def run(*args: str) -> Any:
        return runner.invoke(args=["schedules", *args])

    made = run("create", "nightly", "--task-type", "NOOP", "--cron", "30 2 * * *", "--timezone", "Europe/Berlin",
               "--payload", '{"report": "daily"}', "--priority", "5", "--overlap", "skip", "--catch-up", "latest")
    assert made.exit_code == 0, made.output
    assert "at 02:30 every day, Europe/Berlin" in made.output
    every = run("create", "ping", "--task-type", "NOOP", "--every", "300")
    assert every.exit_code == 0, every.output
    both = run("create", "bad", "--task-type", "NOOP", "--cron", "@daily", "--every", "5")
    assert both.exit_code == 1 and "exactly one of --cron and --every" in both.output
    bad_zone = run("create", "bad", "--task-type", "NOOP", "--every", "5", "--timezone", "Atlantis/Capital")
    assert bad_zone.exit_code == 1 and "timezone:" in bad_zone.output

    listing = run("list")
    assert "nightly" in listing.output and "30 2 * * *" in listing.output and "every 300s" in listing.output
    assert run("pause", "nightly").exit_code == 0
    assert "paused" in run("list").output
    assert run("resume", "nightly").exit_code == 0
    ran = run("run-now", "nightly")
    assert ran.exit_code == 0 and "task " in ran.output
    filled = run("backfill", "ping", "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-01T00:20:00Z")
    assert filled.exit_code == 0, filled.output
    shown = run("show", "nightly")
    assert "overlap           skip" in shown.output and "manual" in shown.output
    assert run("delete", "ping").exit_code == 0
    missing = run("show", "ping")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AsyncTask)) >= 5  # run-now + 4 backfill
        assert [s.name for s in db.session.scalars(select(Schedule))] == ["nightly"]
        assert db.session.scalar(select(Schedule.priority)) == 5


def test_processor_and_config_declarations_are_upserted(make_app: Any, backend: str, tmp_path: Path) -> None:
    declared = tmp_path / "schedules.yml"
    declared.write_text("schedules:\n  - name: from-file\n    task-type: NOOP\n    every: 60\n    catch-up: all\n")
    app = make_app(backend, ASYNC_TASK_PROCESSORS=["tests.processors", "tests.test_schedules_cli"],
                   ASYNC_TASK_SCHEDULES=str(declared))
    clean(app)
    with app.app_context():
        db.session.add(Schedule(name="left-over", task_type="NOOP", payload={}, interval_seconds=5, source="config",
                                declared_in="an old config", anchor_at=ScheduleService().db_now()))
        db.session.commit()
        app.extensions["schedules"].sync()
        found = {s.name: s for s in ScheduleService().list_schedules()}
        assert set(found) == {"nightly-report", "from-file"}  # the undeclared one is gone
        assert found["nightly-report"].source == "processor"
        assert "NightlyReportProcessor" in (found["nightly-report"].declared_in or "")
        assert (found["from-file"].catch_up, found["from-file"].source) == ("all", "config")
        assert str(declared) in (found["from-file"].declared_in or "")
        assert db.session.scalar(select(func.count()).select_from(ScheduleRun)) == 0


@pytest.mark.parametrize(("declaration", "words"), [
    ([{"name": "x", "task_type": "NOOP", "cron": "99 * * * *"}], "cron"),
    ([{"name": "x", "task_type": "NOPE", "every": 5}], "task_type"),
    ([{"name": "x", "task_type": "NOOP", "every": 5}, {"name": "x", "task_type": "NOOP", "every": 6}],
     "declared twice"),
    ("/no/such/schedules.yml", "no such file"),
])
def test_a_bad_declaration_stops_start_up_naming_it(tmp_path: Path, declaration: Any, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.sqlite3",
                    "ASYNC_TASK_PROCESSORS": ["tests.processors"], "ASYNC_TASK_SCHEDULES": declaration})
    assert "ASYNC_TASK_SCHEDULES" in str(caught.value) and words in str(caught.value)


def test_the_config_files_schedules_section_declares_schedules(tmp_path: Path) -> None:
    config = tmp_path / "application.yml"
    config.write_text("async-task:\n  consumer:\n    poll-interval: 2\n  schedules:\n"
                      "    - {name: hourly-noop, task-type: NOOP, cron: '@hourly', time-zone: Asia/Shanghai}\n")
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.sqlite3",
                      "ASYNC_TASK_PROCESSORS": ["tests.processors"], "ASYNC_TASK_CONFIG_FILE": str(config)})
    declarations = app.extensions["schedules"].declarations
    assert [(d.definition.name, d.definition.cron, d.definition.timezone, d.source) for d in declarations] == [
        ("hourly-noop", "@hourly", "Asia/Shanghai", "config")]
