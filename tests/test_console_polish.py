"""Small things a first-time user saw in the console (issue 16 items 14 and 15): no 404 for the
page icon, and a font stack naming the common CJK fonts so Chinese does not render as boxes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask

from tests.conftest import ROOT
from tests.console_support import logged_in_client
from webapp.console.formatting import ago
from webapp.tasks import AsyncTaskService, TaskResult

CJK_FONTS = ["PingFang SC", "Microsoft YaHei", "Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei"]


def test_every_page_names_an_icon_that_is_served(make_app) -> None:
    app: Flask = make_app("sqlite")
    client, _ = logged_in_client(app, "viewer")
    for path in ("/login", "/", "/tasks"):
        html = (app.test_client() if path == "/login" else client).get(path).get_data(as_text=True)
        match = re.search(r'<link rel="icon" type="image/svg\+xml" href="([^"]+)">', html)
        assert match, f"{path} names no icon (the browser would ask for /favicon.ico and get a 404)"
        icon = app.test_client().get(match.group(1))
        assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
        assert icon.get_data(as_text=True).startswith("<svg")


def test_the_console_font_stack_names_the_common_cjk_fonts_before_the_generic_family() -> None:
    css = (ROOT / "static" / "console.css").read_text(encoding="utf-8")
    root_rule = css[css.index(":root"):css.index("}", css.index(":root"))]
    stack = re.search(r"font:\s*[^;]*?/[\d.]+\s+([^;]+);", root_rule)
    assert stack, "the :root rule sets no font"
    families = [name.strip().strip('"') for name in stack.group(1).split(",")]
    assert families[-1] == "sans-serif"
    assert all(font in families for font in CJK_FONTS), families


HTML_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,3})?Z")


def test_datetime_attributes_have_at_most_three_fraction_digits(make_app) -> None:
    app: Flask = make_app("sqlite")
    with app.app_context():
        task = AsyncTaskService().submit_task("NOOP", {"n": 1})
        task_id = task.id
    client, _ = logged_in_client(app, "viewer")
    seen = []
    for path in ("/", "/tasks", f"/tasks/{task_id}", "/workers", "/audit"):
        html = client.get(path).get_data(as_text=True)
        values = re.findall(r'datetime="([^"]*)"', html)
        assert all(HTML_DATETIME.fullmatch(value) for value in values), (path, values)
        seen += values
    assert seen, "no page showed a time"


@pytest.mark.parametrize("path,current", [
    ("/task-types", "Task types"), ("/tasks", "Tasks"), ("/", "Overview"),
    ("/notifications", "Notifications"), ("/notifications/dev-mail", "Notifications"),
])
def test_the_top_bar_marks_exactly_one_page_as_current(make_app, path: str, current: str) -> None:
    app: Flask = make_app("sqlite")
    client, _ = logged_in_client(app, "viewer")
    html = client.get(path).get_data(as_text=True)
    marked = re.findall(r'<a href="[^"]*" aria-current="page">([^<]+)</a>', html)
    assert marked == [current]


def test_a_task_due_later_shows_when_and_the_overview_says_it_is_scheduled(make_app) -> None:
    app: Flask = make_app("sqlite")
    with app.app_context():
        later = datetime.now(UTC) + timedelta(days=60)
        task_id = AsyncTaskService().submit_task("NOOP", {}, run_at=later).id
    client, _ = logged_in_client(app, "viewer")
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    due = re.search(r'<p class="hint" id="not-run">Not run yet\. Due <time datetime="([^"]+)"[^>]*>[^<]+</time> \(in ([^)]+)\)\.</p>', page)
    assert due, page[page.find('id="not-run"') - 50:][:400]
    assert due.group(1) == later.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert due.group(2).startswith("59 d") or due.group(2).startswith("60 d")
    overview = client.get("/").get_data(as_text=True)
    assert "none waiting" in overview
    assert re.search(r'id="scheduled-later"> · 1 scheduled for later<', overview)


def test_a_task_cancelled_while_running_ends_its_attempt(make_app) -> None:
    app: Flask = make_app("sqlite")
    with app.app_context():
        service = AsyncTaskService()
        task_id = service.submit_task("NOOP", {}).id
        [claimed] = [t for t in service.claim_due_tasks("test-worker", 10) if t.id == task_id]
        service.cancel_task(task_id, actor="tester")  # running: a cancel request
        assert service.finish_task(claimed, TaskResult.cancelled(), worker_id="test-worker").status == "CANCELLED"
    client, _ = logged_in_client(app, "viewer")
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    table = page[page.index('<table class="attempts">'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr>") == 2  # the header and the one attempt
    assert ">running<" not in table and "Cancelled" in table


def test_the_workers_page_compares_like_with_like(make_app) -> None:
    app: Flask = make_app("sqlite")
    with app.app_context():
        service = AsyncTaskService()
        service.register_worker("w-1", "host", 1, 2, heartbeat_interval=5)
        service.heartbeat("w-1", busy=0, processed=10, failed=21)
    client, _ = logged_in_client(app, "viewer")
    html = client.get("/workers").get_data(as_text=True)
    assert ">Succeeded</th>" in html and ">Failed attempts</th>" in html and ">Processed<" not in html


@pytest.mark.parametrize("language,expected", [
    ("en", "Priority from must be a whole number"),
    ("zh-CN", "优先级从必须是整数"),
])
def test_a_bad_priority_filter_is_named_by_its_label_in_the_pages_language(make_app, language: str,
                                                                           expected: str) -> None:
    app: Flask = make_app("sqlite")
    client, _ = logged_in_client(app, "viewer")
    answer = client.get("/tasks?priority_min=lots", headers={"Accept-Language": language})
    html = answer.get_data(as_text=True)
    assert answer.status_code == 400
    assert expected in html and "priority_min must" not in html


@pytest.mark.parametrize("language,expected", [("en", "1 min 40 s ago"), ("zh-CN", "1 分 40 秒 前")])
def test_relative_times_are_in_the_pages_language(make_app, language: str, expected: str) -> None:
    app: Flask = make_app("sqlite")
    with app.test_request_context("/", headers={"Accept-Language": language}):
        assert ago(datetime.now(UTC) - timedelta(seconds=100, milliseconds=300)) == expected
