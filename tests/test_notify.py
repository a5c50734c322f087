"""The notification outbox (webapp.notifications.composing): which rows a task's final status writes.

Runs on real SQLite and PostgreSQL; tasks are claimed and finished through AsyncTaskService,
exactly as a consumer does, without threads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from webapp import create_app
from webapp.config import ConfigError, load_settings
from webapp.extensions import db
from webapp.notifications.addresses import is_email_address, validate_webhook_url
from webapp.notifications.queries import notifications_for_task
from webapp.tasks import AsyncTaskService, TaskResult, ValidationError
from webapp.tasks.models import AsyncTask, Notification, Worker
from webapp.tasks.serialize import task_to_dict

PROCESSORS = ["tests.processors", "tests.notify_processors"]
CREATOR = "creator@example.com"


@pytest.fixture
def notify_app(make_app, backend) -> Iterator[Flask]:
    app = make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS, ASYNC_TASK_BASE_URL="https://tasks.example.org/")
    with app.app_context():
        yield app


def run_task(service: AsyncTaskService, task_id: int, result: TaskResult) -> str | None:
    """Claim the task and finish its attempt with ``result``; the status written."""
    claimed = [t for t in service.claim_due_tasks("test-worker", 50) if t.id == task_id]
    assert claimed, f"task {task_id} was not due"
    return service.finish_task(claimed[0], result, worker_id="test-worker").status


def rows(task_id: int) -> list[Notification]:
    db.session.expire_all()
    return notifications_for_task(task_id)


def test_success_queues_one_default_mail_to_the_creator(notify_app):
    service = AsyncTaskService()
    task = service.submit_task("MAIL_OK", {"note": "<script>alert(1)</script>"}, created_by=CREATOR)
    assert rows(task.id) == []
    assert run_task(service, task.id, TaskResult.success({"answer": 42, "html": "<b>x</b>"})) == "SUCCESS"
    [note] = rows(task.id)
    assert (note.type, note.recipient, note.status, note.attempts) == ("EMAIL", CREATOR, "PENDING", 0)
    assert note.subject == f"Task MAIL_OK #{task.id} succeeded"
    assert note.max_attempts == 8
    assert f"https://tasks.example.org/tasks/{task.id}" in note.content
    assert "MAIL_OK" in note.content and "SUCCESS" in note.content and '"answer": 42' in note.content
    assert note.html is not None
    assert f'href="https://tasks.example.org/tasks/{task.id}"' in note.html
    assert "&lt;b&gt;x&lt;/b&gt;" in note.html and "<b>x</b>" not in note.html  # escaped in HTML


def test_failure_mails_once_and_retrying_attempts_mail_nothing(notify_app):
    service = AsyncTaskService()
    task = service.submit_task("MAIL_FAILS", {}, created_by=CREATOR)
    for attempt in (1, 2):
        assert run_task(service, task.id, TaskResult.failure(f"fail {attempt}")) == "RETRYING"
        assert rows(task.id) == []
        db.session.execute(update(AsyncTask).where(AsyncTask.id == task.id)
                           .values(next_run_at=AsyncTask.created_at))
        db.session.commit()
    assert run_task(service, task.id, TaskResult.failure("disk full")) == "FAILURE"
    [note] = rows(task.id)
    assert note.subject == f"Task MAIL_FAILS #{task.id} failed"
    assert "disk full" in note.content and "FAILURE" in note.content


@pytest.mark.parametrize("created_by", [None, "ops-team", "not an address@example.com", "a@b"])
def test_no_default_mail_without_an_email_creator(notify_app, created_by):
    service = AsyncTaskService()
    task = service.submit_task("MAIL_OK", {}, created_by=created_by)
    assert run_task(service, task.id, TaskResult.success()) == "SUCCESS"
    assert rows(task.id) == []


def test_processor_can_opt_out(notify_app):
    service = AsyncTaskService()
    task = service.submit_task("QUIET", {}, created_by=CREATOR)
    assert run_task(service, task.id, TaskResult.success()) == "SUCCESS"
    assert rows(task.id) == []


def test_invalid_recipient_from_a_processor_is_skipped_with_the_reason(notify_app):
    service = AsyncTaskService()
    task = service.submit_task("CUSTOM_MAIL", {"to": "bob at example"}, created_by=CREATOR)
    assert run_task(service, task.id, TaskResult.success()) == "SUCCESS"
    [note] = rows(task.id)
    assert note.status == "SKIPPED"
    assert "invalid email recipient 'bob at example'" in (note.last_error or "")
    assert note.subject == f"Custom report {task.id}"  # the line break cannot reach a header


def test_a_processor_whose_builder_raises_still_ends_success(notify_app):
    service = AsyncTaskService()
    task = service.submit_task("BROKEN_BUILDER", {}, created_by=CREATOR)
    assert run_task(service, task.id, TaskResult.success()) == "SUCCESS"
    assert service.get_task(task.id).status == "SUCCESS"
    [note] = rows(task.id)
    assert note.status == "SKIPPED"
    assert "build_notification_request raised KeyError" in (note.last_error or "")


def test_notify_url_queues_a_webhook_with_the_frozen_task_json(notify_app):
    service = AsyncTaskService()
    url = "https://hooks.example.org/taskdeck?x=1"
    task = service.submit("MAIL_OK", {}, created_by="ops", notify_url=url).task
    assert run_task(service, task.id, TaskResult.success({"answer": 42})) == "SUCCESS"
    [note] = rows(task.id)
    assert (note.type, note.recipient, note.status) == ("WEBHOOK", url, "PENDING")
    body = json.loads(note.content)
    db.session.expire_all()
    assert body == task_to_dict(service.get_task(task.id))
    assert body["status"] == "SUCCESS" and body["result"] == {"answer": 42}


def test_a_mail_and_a_webhook_for_one_task(notify_app):
    service = AsyncTaskService()
    task = service.submit("MAIL_OK", {}, created_by=CREATOR, notify_url="https://h.example.org/").task
    run_task(service, task.id, TaskResult.success())
    assert sorted(n.type for n in rows(task.id)) == ["EMAIL", "WEBHOOK"]


def test_processor_webhook_with_a_bad_url_is_skipped(notify_app):
    service = AsyncTaskService()
    task = service.submit_task("HOOK", {"url": "ftp://files.example.org/x"})
    assert run_task(service, task.id, TaskResult.success()) == "SUCCESS"
    [note] = rows(task.id)
    assert note.status == "SKIPPED" and "http(s)" in (note.last_error or "")


@pytest.mark.parametrize("url", ["ftp://example.org/", "http://", "javascript:alert(1)", "example.org/hook",
                                 "http://exa mple.org/", "http://example.org:99999/", 42, "",
                                 "https://example.org/" + "x" * 2000])
def test_bad_notify_url_is_refused_at_submit_and_nothing_is_written(notify_app, url):
    service = AsyncTaskService()
    with pytest.raises(ValidationError) as error:
        service.submit("MAIL_OK", {}, notify_url=url)
    assert error.value.field == "notify_url"
    db.session.rollback()
    assert db.session.scalar(select(func.count()).select_from(AsyncTask)) == 0


def test_a_task_given_up_by_recovery_notifies_its_failure(notify_app):
    service = AsyncTaskService()
    task = service.submit_task("MAIL_OK", {}, created_by=CREATOR)
    service.register_worker("dead-worker", "h", 1, 1, 0.1)
    db.session.execute(update(AsyncTask).where(AsyncTask.id == task.id).values(recovery_count=99))
    db.session.commit()
    service.claim_due_tasks("dead-worker", 1)
    db.session.execute(update(Worker).where(Worker.id == "dead-worker").values(status="DEAD"))
    db.session.commit()
    assert service.recover_orphans(3600, 0.1) == [task.id]
    [note] = rows(task.id)
    assert note.subject == f"Task MAIL_OK #{task.id} failed" and note.status == "PENDING"
    assert "giving up" in note.content


def test_email_address_check():
    assert is_email_address("creator@example.com")
    assert is_email_address("first.last+tag@sub.example.co.uk")
    for bad in (None, "", "creator", "a@b", "a b@example.com", "<a@example.com>", "a@example.com, b@example.com",
                "a@-example.com", "x" * 250 + "@example.com"):
        assert not is_email_address(bad), bad


def test_webhook_url_check_accepts_http_and_https():
    assert validate_webhook_url("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"
    assert validate_webhook_url("https://hooks.example.org/a?b=c")


def test_mail_settings_from_the_environment_are_parsed(tmp_path):
    env: dict[str, Any] = {"MAIL_PORT": "2525", "MAIL_USE_TLS": "false", "MAIL_USE_SSL": "0",
                           "MAIL_SERVER": "smtp.example.org", "MAIL_TIMEOUT": "2.5",
                           "ASYNC_TASK_NOTIFY_TIMEOUT": "3", "ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE": "yes"}
    settings = load_settings(str(tmp_path), {}, env)
    assert settings["MAIL_PORT"] == 2525
    assert settings["MAIL_USE_TLS"] is False and settings["MAIL_USE_SSL"] is False
    assert settings["MAIL_TIMEOUT"] == 2.5 and settings["ASYNC_TASK_NOTIFY_TIMEOUT"] == 3.0
    assert settings["ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE"] is True
    assert settings["ASYNC_TASK_WEBHOOK_SECRET"] is None
    # An explicit override beats the environment.
    assert load_settings(str(tmp_path), {"MAIL_PORT": 26}, env)["MAIL_PORT"] == 26
    with pytest.raises(ConfigError, match="MAIL_PORT"):
        load_settings(str(tmp_path), {}, {"MAIL_PORT": "smtp"})
    with pytest.raises(ConfigError, match="MAIL_USE_TLS"):
        load_settings(str(tmp_path), {}, {"MAIL_USE_TLS": "maybe"})


def test_flask_mail_sees_parsed_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MAIL_PORT", "2526")
    monkeypatch.setenv("MAIL_USE_TLS", "false")
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.sqlite3",
                      "SECRET_KEY": "k"})
    state = app.extensions["mail"]
    assert (state.port, state.use_tls) == (2526, False)
