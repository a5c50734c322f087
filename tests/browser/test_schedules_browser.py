"""Schedules in Chromium, the way an operator works: create -> live preview -> save -> run now ->
history -> the task it created."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveConsole, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


def test_create_preview_save_run_now_history(page: Any, live_console: LiveConsole) -> None:
    page.goto("/schedules")
    page.click("#new-schedule")
    page.fill("#field-name", "browser-nightly")
    page.select_option("#field-task_type", "NOOP")
    page.fill("#field-timezone", "Europe/Berlin")
    page.fill("#field-cron", "61 2 * * *")
    # The preview answers as the operator types: first the error naming the field...
    expect(page.locator("#preview-error")).to_contain_text("(cron)")
    page.fill("#field-cron", "30 2 * * *")
    # ...then the reading and the next five fire times, in the zone and in UTC.
    expect(page.locator("#preview-reading")).to_have_text("at 02:30 every day, Europe/Berlin")
    expect(page.locator("#preview-fires li")).to_have_count(5)
    expect(page.locator("#preview-fires li").first).to_contain_text("02:30 CE")
    page.fill("#field-payload", '{"from": "browser"}')
    screenshot(page, "docs-schedule-form", full_page=True)
    page.click("#save-schedule")

    expect(page).to_have_url(f"{live_console.url}/schedules/browser-nightly")
    expect(page.locator("#messages")).to_contain_text("browser-nightly created")
    expect(page.locator("#schedule-reading")).to_have_text("at 02:30 every day, Europe/Berlin")
    expect(page.locator("#upcoming li")).to_have_count(5)

    page.click("#run-now")  # hx-confirm is accepted by the test's dialog handler
    expect(page.locator("#messages")).to_contain_text("submitted for browser-nightly")
    # The in-process consumer runs the task; the history (polled) shows it succeed.
    expect(page.locator("#schedule-runs .badge[data-status=SUCCESS]")).to_have_count(1, timeout=20_000)
    link = page.locator("#schedule-runs a[href^='/tasks/']")
    task_path = link.get_attribute("href")
    link.click()
    expect(page).to_have_url(f"{live_console.url}{task_path}")
    expect(page.locator("body")).to_contain_text("browser")

    page.goto("/schedules")
    row = page.locator("#schedule-browser-nightly")
    expect(row.locator(".run-cell[data-status=SUCCESS]")).to_have_count(1)
    expect(row).to_contain_text("Europe/Berlin")
    screenshot(page, "docs-schedules", full_page=True)
