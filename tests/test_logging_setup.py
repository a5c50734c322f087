"""Structured logs: every line logged while a task runs names its id, type and attempt.

The end-to-end JSON check with real ``flask tasks worker`` processes and gunicorn is in
tests/test_gunicorn.py (``test_dedicated_workers_with_web_consumer_off``).
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from types import SimpleNamespace

import pytest

from tests.conftest import wait_until
from webapp import ConfigError, create_app
from webapp.logging_setup import (
    HANDLER_NAME,
    JsonFormatter,
    TextFormatter,
    configure_logging,
    gunicorn_logconfig,
    install_record_factory,
    task_log_context,
)
from webapp.tasks import AsyncTaskService
from webapp.tasks.consumer import Consumer

log = logging.getLogger("tests.logging_setup")


def task(task_id: int, task_type: str = "NOOP", attempt: int = 1) -> SimpleNamespace:
    return SimpleNamespace(id=task_id, task_type=task_type, attempt=attempt)


def formatted(formatter: logging.Formatter, emit) -> list[str]:
    """Lines ``emit()`` writes to a handler using ``formatter``."""
    install_record_factory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        emit()
    finally:
        log.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_task_only_while_it_runs():
    def emit():
        log.info("before")
        with task_log_context(task(42, "CREATE_SERVER", 3)):
            log.warning("during %s", "work", extra={"request_id": "r-1"})
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
        log.info("after")

    before, during, failed, after = (json.loads(line) for line in formatted(JsonFormatter(), emit)
                                     if line.startswith("{"))
    assert "task_id" not in before and "task_id" not in after
    assert during["message"] == "during work"
    assert (during["task_id"], during["task_type"], during["attempt"]) == (42, "CREATE_SERVER", 3)
    assert during["level"] == "WARNING" and during["logger"] == "tests.logging_setup"
    assert during["request_id"] == "r-1"
    assert failed["task_id"] == 42 and "ValueError: boom" in failed["exc_info"]


def test_text_lines_end_with_the_task():
    def emit():
        with task_log_context(task(7, "SEND_REPORT", 2)):
            log.info("sending")
        log.info("idle")

    sending, idle = formatted(TextFormatter(), emit)
    assert sending.endswith("sending [task=7 type=SEND_REPORT attempt=2]")
    assert idle.endswith("idle")


def test_threads_running_side_by_side_keep_their_own_task():
    lines: list[str] = []
    barrier = threading.Barrier(2)

    def run(task_id: int) -> None:
        with task_log_context(task(task_id)):
            barrier.wait(timeout=5)  # both contexts set before either logs
            log.info("thread of %s", task_id)

    def emit():
        threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=5)

    lines = formatted(JsonFormatter(), emit)
    records = [json.loads(line) for line in lines]
    assert sorted((r["message"], r["task_id"]) for r in records) == [("thread of 1", 1), ("thread of 2", 2)]


def test_consumer_tags_engine_and_processor_lines(sqlite_template, make_app, caplog):
    """A real consumer: the engine's warning about a failed attempt names that attempt.

    ``sqlite_template`` is asked for first so that its migration (whose alembic.ini logging
    setup replaces the root handlers) runs before caplog installs its handler.
    """
    app = make_app("sqlite")
    caplog.set_level(logging.INFO)
    with app.app_context():
        task_id = AsyncTaskService().submit_task("EXPO_FAIL", {}).id
    Consumer(app, concurrency=1, poll_interval=0.05).start()
    wait_until(lambda: len(failures(caplog, task_id)) >= 2, timeout=15, message="two failed attempts logged")
    for record in failures(caplog, task_id):
        assert record.task_id == task_id
        assert record.task_type == "EXPO_FAIL"
        assert f"attempt {record.attempt} raised" in record.getMessage()
    assert [r.attempt for r in failures(caplog, task_id)][:2] == [1, 2]
    scheduler_lines = [r for r in caplog.records if r.name == "webapp.tasks.consumer" and "started" in r.getMessage()]
    assert scheduler_lines and all(r.task_id is None for r in scheduler_lines)


def failures(caplog, task_id: int) -> list[logging.LogRecord]:
    pattern = re.compile(rf"task {task_id} \(EXPO_FAIL\) attempt \d+ raised")
    return [r for r in caplog.records if pattern.search(r.getMessage())]


def test_bad_log_format_stops_start_up_naming_the_setting():
    with pytest.raises(ConfigError, match="ASYNC_TASK_LOG_FORMAT"):
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://", "ASYNC_TASK_LOG_FORMAT": "xml"})


def test_configure_logging_adopts_its_own_handler_and_leaves_foreign_ones():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        root.handlers = []
        configure_logging("json", "WARNING")
        ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert root.level == logging.WARNING
        configure_logging("text", "INFO")  # a second app in the same process: reformat, no stacking
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, TextFormatter)

        foreign = logging.StreamHandler(io.StringIO())
        root.handlers = [foreign]
        configure_logging("json")
        assert root.handlers == [foreign] and not isinstance(foreign.formatter, JsonFormatter)
    finally:
        root.handlers, root.level = saved_handlers, saved_level


def test_gunicorn_logconfig_routes_its_logs_through_our_handler():
    config = gunicorn_logconfig("json", "info")
    assert config["root"] == {"level": "INFO", "handlers": [HANDLER_NAME]}
    assert config["formatters"][HANDLER_NAME]["()"] == "webapp.logging_setup.JsonFormatter"
    for name in ("gunicorn.error", "gunicorn.access"):
        assert config["loggers"][name]["handlers"] == [] and config["loggers"][name]["propagate"]
    with pytest.raises(ValueError):
        gunicorn_logconfig("yaml")
