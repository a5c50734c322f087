"""Issue 16 (what a first-time user tripped on) in Chromium: Pause all and a type's Pause ask
first, and saying no changes nothing; the page asks for no /favicon.ico."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveConsole
from webapp.tasks import AsyncTaskService

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def _paused(live: LiveConsole) -> list[str]:
    with live.app.app_context():
        return AsyncTaskService().paused_task_types()


def test_pause_all_and_a_types_pause_ask_first(page: Any, live_console: LiveConsole) -> None:
    asked: list[str] = []
    page.on("dialog", lambda dialog: asked.append(dialog.message))  # the context's handler says yes
    page.goto("/task-types")
    page.click("#pause-all")
    expect(page.locator("#resume-all")).to_be_visible()
    assert asked == ["Pause every task type? Running tasks finish, but no task starts until you resume."]
    assert "*" in _paused(live_console)
    page.click("#resume-all")  # resuming asks nothing
    expect(page.locator("#pause-all")).to_be_visible()
    assert len(asked) == 1

    page.click("#pause-NOOP")
    expect(page.locator("#resume-NOOP")).to_be_visible()
    assert asked[1] == "Pause NOOP? Running tasks finish, but no NOOP task starts until you resume."
    assert "NOOP" in _paused(live_console)


def test_saying_no_pauses_nothing(page: Any, live_console: LiveConsole) -> None:
    page.goto("/task-types")
    if page.locator("#resume-all").count():  # another test left everything paused
        page.click("#resume-all")
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.evaluate("window.confirm = function () { return false; }")  # the operator says no
    page.click("#pause-all")  # the submit event runs during the click: a post would have started
    expect(page.locator("#pause-all")).to_be_visible()
    assert posts == [] and "*" not in _paused(live_console)


def test_no_request_for_favicon_ico(page: Any) -> None:
    missing: list[str] = []
    page.on("response", lambda response: missing.append(response.url) if response.status == 404 else None)
    page.goto("/")
    page.wait_for_load_state("networkidle")
    assert missing == []
