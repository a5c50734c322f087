"""Workflows in Chromium: the graph of a running workflow turns green node by node without a reload."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveConsole, screenshot
from webapp.tasks import AsyncTaskService

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]
CONSOLE_PROCESSORS = ["tests.processors", "tests.workflow_processors"]


def test_the_graph_turns_green_without_a_reload(page: Any, live_console: LiveConsole) -> None:
    with live_console.app.app_context():
        service = AsyncTaskService()
        service.pause_task_type("WF_ADD", actor="browser-test")  # hold it until the page is open
        submitted = service.submit_workflow(
            name="browser-diamond",
            tasks=[{"key": "extract", "task_type": "WF_ADD", "payload": {"n": 1}},
                   {"key": "left", "task_type": "WF_ADD", "payload": {"n": 2}, "after": ["extract"]},
                   {"key": "right", "task_type": "WF_ADD", "payload": {"n": 3}, "after": ["extract"]},
                   {"key": "load", "task_type": "WF_ADD", "payload": {"n": 4}, "after": ["left", "right"]}],
            callbacks={"on_success": {"task_type": "WF_CALLBACK", "payload": {}}})
    page.goto("/workflows")
    page.click(f"#workflow-{submitted.workflow_id} a")
    expect(page).to_have_url(f"{live_console.url}/workflows/{submitted.workflow_id}")
    nodes = page.locator("#workflow-graph .workflow-node")
    expect(nodes).to_have_count(4)
    expect(page.locator("#node-extract")).to_have_attribute("data-status", "PENDING")
    expect(page.locator("#node-load")).to_have_attribute("data-status", "WAITING")
    expect(page.locator("#workflow-progress")).to_have_text("0 / 4 done")
    screenshot(page, "docs-workflow-waiting", full_page=True)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads

    with live_console.app.app_context():
        AsyncTaskService().resume_task_type("WF_ADD", actor="browser-test")
    for key in ("extract", "left", "right", "load"):
        expect(page.locator(f"#node-{key}")).to_have_attribute("data-status", "SUCCESS", timeout=20_000)
    expect(page.locator("#workflow-state .badge")).to_have_attribute("data-status", "SUCCEEDED", timeout=20_000)
    expect(page.locator("#workflow-progress")).to_have_text("4 / 4 done")
    expect(page.locator("#workflow-callbacks .badge[data-status=SUCCESS]")).to_have_count(1, timeout=20_000)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded"
    # Nothing can change any more: the live part stopped polling.
    expect(page.locator("#workflow-live")).to_have_attribute("hx-trigger", "none", timeout=10_000)
    screenshot(page, "docs-workflow-done", full_page=True)
    page.click("#node-load")
    expect(page).to_have_url(f"{live_console.url}/tasks/{submitted.task_ids['load']}")
    expect(page.locator("#task-parents")).to_contain_text("left")
    expect(page.locator("#task-parents")).to_contain_text("right")
