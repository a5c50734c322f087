"""History in Chromium: the overview's history section loads, and the range switch swaps the charts
in place (1 h → 24 h → 7 d → 30 d) without leaving the page."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveConsole, screenshot
from tests.conftest import wait_until
from webapp.tasks import AsyncTaskService
from webapp.tasks.history import SETTLE, HistoryWriter
from webapp.tasks.models import utcnow

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

STARTED_THREE_OR_MORE = re.compile(r"\b([3-9]|\d{2,}) started")


def _finished(live: LiveConsole, ids: list[int]) -> bool:
    with live.app.app_context():
        service = AsyncTaskService()
        return all(service.require_task(task_id).status == "SUCCESS" for task_id in ids)


def test_the_range_switch_swaps_the_overview_charts(page: Any, live_console: LiveConsole) -> None:
    with live_console.app.app_context():
        ids = [AsyncTaskService().submit_task("NOOP", {"n": n}).id for n in range(3)]
    wait_until(lambda: _finished(live_console, ids), timeout=60, message="three NOOP tasks succeeded")
    with live_console.app.app_context():
        HistoryWriter().run(utcnow() + timedelta(minutes=1) + SETTLE)  # their minute has ended and settled
    page.goto("/")
    history = page.locator("#history")
    expect(history).to_have_attribute("data-range", "1h")
    expect(page.locator("#range-1h")).to_have_attribute("aria-current", "true")
    expect(page.locator("#history-counts")).to_have_attribute("aria-label", STARTED_THREE_OR_MORE)
    url = page.url
    for key in ("24h", "7d", "30d"):
        page.click(f"#range-{key}")
        expect(history).to_have_attribute("data-range", key)
        expect(page.locator(f"#range-{key}")).to_have_attribute("aria-current", "true")
        expect(page.locator("#range-1h")).not_to_have_attribute("aria-current", "true")
        expect(page.locator("#history-counts")).to_have_attribute("aria-label", STARTED_THREE_OR_MORE)
        assert page.url == url  # swapped in place: still the overview
    expect(page.locator("#overview-live")).to_be_visible()
    screenshot(page, "docs-history")
