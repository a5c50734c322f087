"""Console languages: Accept-Language, the switch, translated pages, the committed catalogue, and
the default notification mail in Chinese."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_file
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from flask import Flask
from markupsafe import escape

from tests.conftest import ROOT
from tests.console_support import csrf_from, logged_in_client
from webapp.config import ConfigError, load_settings
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.models import Notification

CATALOGUE = ROOT / "webapp" / "translations" / "zh_Hans" / "LC_MESSAGES"
PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")
ZH = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}


def test_accept_language_picks_the_console_language(app: Flask) -> None:
    client = app.test_client()
    chinese = client.get("/login", headers=ZH).text
    assert '<html lang="zh-Hans">' in chinese and "<h1>登录</h1>" in chinese and "用户名" in chinese
    assert '<option value="zh_Hans" lang="zh-Hans" selected>简体中文</option>' in chinese
    for header in ("en-GB,en;q=0.9", "de-DE,de;q=0.9", ""):
        page = client.get("/login", headers={"Accept-Language": header}).text
        assert '<html lang="en">' in page and "<h1>Log in</h1>" in page


def test_the_switch_overrides_the_browser_and_survives_logout(app: Flask) -> None:
    client, token = logged_in_client(app, "viewer", "wen")
    assert client.post("/language", data={"lang": "zh_Hans", "next": "/tasks"}).status_code == 400  # CSRF
    switched = client.post("/language", data={"csrf_token": token, "lang": "zh_Hans", "next": "/tasks?status=FAILURE"})
    assert switched.status_code == 303 and switched.headers["Location"] == "/tasks?status=FAILURE"
    cookie = switched.headers["Set-Cookie"]
    assert cookie.startswith("console_lang=zh_Hans;") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/tasks", headers={"Accept-Language": "en"}).text
    assert "<h1>任务</h1>" in page and '<span class="role">查看者</span>' in page

    ignored = client.post("/language", data={"csrf_token": token, "lang": "fr", "next": "https://evil.example/"})
    assert ignored.status_code == 303 and ignored.headers["Location"] == "/"
    assert not any("console_lang" in value for value in ignored.headers.getlist("Set-Cookie"))
    client.post("/logout", data={"csrf_token": csrf_from(client.get("/").text)})
    assert "<h1>登录</h1>" in client.get("/login").text  # the choice outlives the session

    client.post("/language", data={"csrf_token": csrf_from(client.get("/login").text), "lang": "en", "next": "/login"})
    assert "<h1>Log in</h1>" in client.get("/login", headers=ZH).text


def test_chinese_pages_keep_status_codes_in_attributes(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {"x": "<b>"}, run_at="2999-01-01T00:00:00Z").id
    client, _ = logged_in_client(app, "operator")
    rows = client.get(f"/tasks?id={task_id}", headers=ZH).text
    assert f'<tr id="task-{task_id}" data-status="PENDING">' in rows
    assert '<span class="badge" data-status="PENDING">等待中</span>' in rows
    detail = client.get(f"/tasks/{task_id}", headers=ZH).text
    assert "取消任务" in detail and "时间线" in detail and "已提交" in detail
    assert f"取消任务 #{task_id}？它将不会运行。" in detail  # the hx-confirm text
    assert str(escape('"x": "<b>"')) in detail
    overview = client.get("/", headers=ZH).text
    assert "等待最久的到期任务" in overview and "所有任务类型都在被领取。" in overview


def _extracted_messages() -> set[str]:
    """Every msgid in the console's code and templates (what pybabel extract would find)."""
    keywords = {**DEFAULT_KEYWORDS, "lazy_gettext": None}
    sources = [("python", path) for path in sorted((ROOT / "webapp" / "console").glob("*.py"))]
    sources += [("jinja2", path) for path in sorted((ROOT / "templates").glob("*.html"))]
    sources += [("jinja2", path) for path in sorted((ROOT / "templates" / "partials").glob("*.html"))]
    found = set()
    for method, path in sources:
        for _line, message, _comments, _context in extract_from_file(method, str(path), keywords=keywords):
            found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_console_string_has_a_chinese_translation_and_the_mo_is_current() -> None:
    with (CATALOGUE / "messages.po").open("rb") as source:
        po = read_po(source)
    translated = {m.id: m.string for m in po if m.id and m.string and not m.fuzzy}
    # A plural entry (ngettext) is keyed by its singular, as extraction names it; every form translated.
    singular = {(msgid[0] if isinstance(msgid, tuple) else msgid): msgstr for msgid, msgstr in translated.items()
                if not isinstance(msgstr, tuple) or all(msgstr)}
    missing = sorted(_extracted_messages() - set(singular))
    assert not missing, ("untranslated console strings; see webapp/console/i18n.py for the pybabel "
                         f"commands: {missing}")
    for msgid, msgstr in translated.items():
        for form in (msgstr if isinstance(msgstr, tuple) else (msgstr,)):
            source = msgid[-1] if isinstance(msgid, tuple) else msgid
            assert sorted(PLACEHOLDER.findall(source)) == sorted(PLACEHOLDER.findall(form)), msgid
    with (CATALOGUE / "messages.mo").open("rb") as compiled:
        mo = read_mo(compiled)
    compiled_entries = {(tuple(m.id) if isinstance(m.id, list | tuple) else m.id):
                        (tuple(m.string) if isinstance(m.string, list | tuple) else m.string) for m in mo if m.id}
    assert compiled_entries == translated, (
        "messages.mo is out of date: run .venv/bin/pybabel compile -d webapp/translations")


@pytest.fixture
def mail_app(make_app, backend) -> Iterator[Flask]:  # type: ignore[no-untyped-def]
    app = make_app(backend, ASYNC_TASK_PROCESSORS=["tests.processors", "tests.notify_processors"],
                   ASYNC_TASK_MAIL_LANGUAGE="zh", ASYNC_TASK_BASE_URL="https://tasks.example.org")
    with app.app_context():
        yield app


def test_default_mail_in_chinese(mail_app: Flask) -> None:
    assert mail_app.config["ASYNC_TASK_MAIL_LANGUAGE"] == "zh_Hans"
    service = AsyncTaskService()
    task = service.submit_task("MAIL_OK", {}, created_by="li@example.com")
    [claimed] = [t for t in service.claim_due_tasks("test-worker", 10) if t.id == task.id]
    service.finish_task(claimed, TaskResult.success({"答案": 42}), worker_id="test-worker")
    db.session.expire_all()
    [note] = db.session.query(Notification).filter_by(task_id=task.id).all()
    assert note.subject == f"任务 MAIL_OK #{task.id} 已成功"
    assert f"您的任务 MAIL_OK #{task.id} 已成功完成。" in note.content
    assert "状态：SUCCESS" in note.content and '"答案": 42' in note.content
    assert f"详情：https://tasks.example.org/tasks/{task.id}" in note.content
    assert note.html is not None and '<html lang="zh-Hans">' in note.html and "在控制台中打开该任务" in note.html


def test_mail_language_setting_is_checked(tmp_path: Path) -> None:
    assert load_settings(str(tmp_path), environ={})["ASYNC_TASK_MAIL_LANGUAGE"] == "en"
    assert load_settings(str(tmp_path), environ={"ASYNC_TASK_MAIL_LANGUAGE": "zh-CN"})["ASYNC_TASK_MAIL_LANGUAGE"] == "zh_Hans"
    with pytest.raises(ConfigError, match="ASYNC_TASK_MAIL_LANGUAGE"):
        load_settings(str(tmp_path), environ={"ASYNC_TASK_MAIL_LANGUAGE": "fr"})
