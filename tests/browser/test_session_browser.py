"""Sessions in Chromium: a page refreshing itself is marked as a poll (not activity), an
operator's own request is not; the password page works from the top bar.

The server side (an idle session ends even while its pages poll) is tested in
``tests/security/test_passwords_and_sessions.py``; this checks the half that lives in
``static/console.js``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import LiveConsole
from webapp.tasks import AsyncTaskService

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def test_polls_are_marked_and_operator_requests_are_not(page: Any, live_console: LiveConsole) -> None:
    with live_console.app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}, run_at="2999-01-01T00:00:00Z").id

    def is_poll_of_task(request: Any) -> bool:
        return request.url.endswith(f"/tasks/{task_id}") and request.headers.get("hx-request") == "true"

    page.goto(f"/tasks/{task_id}")  # a waiting task: its live part polls every second
    for _ in range(2):
        with page.expect_request(is_poll_of_task, timeout=15_000) as poll:
            pass
        assert poll.value.headers.get("x-console-poll") == "1", poll.value.headers

    page.goto("/tasks")
    page.fill("#task-search", "nothing-matches-this")
    with page.expect_request(lambda request: "search=nothing-matches-this" in request.url
                             and request.headers.get("hx-request") == "true", timeout=15_000) as own:
        page.press("#task-search", "Enter")  # the operator's own htmx request
    assert "x-console-poll" not in own.value.headers, own.value.headers


def test_the_password_page_is_reached_from_the_top_bar(page: Any) -> None:
    page.click("#my-account")
    page.wait_for_selector("input[name=current_password]")
    page.fill("input[name=current_password]", "not the password")
    page.fill("input[name=password]", "plum orbit lantern 42")
    page.fill("input[name=password_confirm]", "plum orbit lantern 42")
    page.click("#change-password")
    assert "current password is not correct" in page.inner_text("#password-error")
