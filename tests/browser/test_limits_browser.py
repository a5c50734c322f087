"""Flow control in Chromium: a held-back task says why on its page and in the list, and ``/limits``
shows the limit and takes an operator's override (confirmed, refused values named)."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import LiveConsole, screenshot
from tests.conftest import wait_until
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AsyncTask

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CONSOLE_PROCESSORS = ["tests.processors", "tests.limit_processors"]
TENANT = "browser-tenant"


def _statuses(live_console: LiveConsole, ids: list[int]) -> list[str]:
    with live_console.app.app_context():
        try:
            return [db.session.get(AsyncTask, task_id).status for task_id in ids]
        finally:
            db.session.remove()


def test_waiting_reason_and_limits_page(page: Any, live_console: LiveConsole) -> None:
    with live_console.app.app_context():
        service = AsyncTaskService()  # two starts per 30 s per tenant: the third waits
        ids = [service.submit_task("RATED_PER_TENANT", {"tenant": TENANT}).id for _ in range(3)]
        db.session.remove()
    wait_until(lambda: _statuses(live_console, ids).count("SUCCESS") == 2, timeout=20,
               message="two of the three started and succeeded")
    [held] = [task_id for task_id, status in zip(ids, _statuses(live_console, ids), strict=True)
              if status == "PENDING"]

    page.goto(f"/tasks/{held}")
    reason = page.locator("#waiting-holds")
    expect(reason).to_contain_text(f"waiting: rate 2 per 30 s for tenant={TENANT}, next start in")
    screenshot(page, "docs-waiting-reason", full_page=False)
    page.goto("/tasks?task_type=RATED_PER_TENANT")
    expect(page.locator(f"#task-{held} [data-waiting]")).to_contain_text("waiting: rate 2 per 30 s")

    page.click("nav a[href='/limits']")
    row = page.locator("#limit-RATED_PER_TENANT")
    expect(row).to_contain_text("2 / 2")  # starts in the current window / limit
    expect(row).to_contain_text("2 per 30 s")
    screenshot(page, "docs-limits", full_page=True)

    # A refused value comes back beside its field, nothing stored.
    page.fill("#RATED_PER_TENANT-rate_count", "zero")
    page.click("#save-RATED_PER_TENANT")  # data-confirm: the test's dialog handler says yes
    expect(page.locator("#limit-error")).to_contain_text("(rate_count)")
    expect(page.locator("#RATED_PER_TENANT-rate_count")).to_have_attribute("aria-invalid", "true")

    # A valid override lets the held task start within seconds.
    page.fill("#RATED_PER_TENANT-rate_count", "5")
    page.fill("#RATED_PER_TENANT-rate_per_seconds", "30")
    page.click("#save-RATED_PER_TENANT")
    expect(page.locator("#messages")).to_contain_text("overridden")
    expect(page.locator("#limit-RATED_PER_TENANT")).to_contain_text("overridden")
    wait_until(lambda: _statuses(live_console, [held]) == ["SUCCESS"], timeout=20,
               message="the held task ran once the rate was raised")
