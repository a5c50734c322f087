"""The console in Chromium, driven the way an operator uses it: log in, filter, inspect, act, watch."""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import BrowserProblems, LiveConsole, log_in, open_context, screenshot
from tests.conftest import wait_until
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import TaskEvent, utcnow

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

FAR_FUTURE = "2999-01-01T00:00:00Z"
XSS_IMG = "<img src=x onerror=alert(1)>"
XSS_SCRIPT = "<script>alert(2)</script>"


def submit(live: LiveConsole, task_type: str, payload: dict, **kwargs: Any) -> int:
    with live.app.app_context():
        return AsyncTaskService().submit_task(task_type, payload, **kwargs).id


def status_of(live: LiveConsole, task_id: int) -> str:
    with live.app.app_context():
        return AsyncTaskService().require_task(task_id).status


def wait_for_status(live: LiveConsole, task_id: int, status: str, timeout: float = 20) -> None:
    wait_until(lambda: status_of(live, task_id) == status, timeout=timeout,
               message=f"task {task_id} to reach {status}")


def record_statuses(page: Any, selector: str) -> None:
    """Sample the element's data-status every 50 ms into window.__seen (survives htmx swaps)."""
    page.evaluate("""(selector) => {
        window.__marker = "no reload";
        window.__seen = [];
        setInterval(() => {
            const el = document.querySelector(selector);
            const status = el && el.getAttribute("data-status");
            if (status && window.__seen[window.__seen.length - 1] !== status) window.__seen.push(status);
        }, 50);
    }""", selector)


def test_login_overview_filter_and_open_a_task(page: Any, live_console: LiveConsole) -> None:
    ordered = submit(live_console, "ORDER", {"customer": "ACME", "amount": 3, "tags": ["b2b"]},
                     created_by="buyer@example.com")
    for n in range(3):
        submit(live_console, "NOOP", {"n": n})
    failing = submit(live_console, "FATAL", {"why": "demo"})
    wait_for_status(live_console, ordered, "SUCCESS")
    wait_for_status(live_console, failing, "FAILURE")

    # Overview: counts, chart and a live refresh (a new task shows up without a reload).
    expect(page.locator("#throughput-chart")).to_be_visible()
    expect(page.locator("#throughput-chart rect.bar-ok").first).to_be_attached()
    pending_count = page.locator("#count-PENDING .count")
    before = int(pending_count.inner_text())
    submit(live_console, "NOOP", {"later": True}, run_at=FAR_FUTURE)
    expect(pending_count).to_have_text(str(before + 1), timeout=10_000)
    screenshot(page, "overview")

    # Task list: filter with the form; the URL follows with the API's parameter names.
    page.click("nav >> text=Tasks")
    page.wait_for_selector("#task-rows")
    page.fill("#filter-form input[name=task_type]", "ORDER")
    page.check("#filter-form input[name=status][value=SUCCESS]")
    page.click("#filter-form button[type=submit]")
    page.wait_for_url(re.compile(r"/tasks\?task_type=ORDER&status=SUCCESS$"))
    expect(page.locator("#task-rows tr[id^=task-]")).to_have_count(1)
    expect(page.locator(f"#task-{ordered}")).to_have_attribute("data-status", "SUCCESS")
    page.fill("#filter-form input[name=task_type]", "")
    page.uncheck("#filter-form input[name=status][value=SUCCESS]")
    page.click("#filter-form button[type=submit]")
    page.wait_for_url(re.compile(r"/tasks$"))
    expect(page.locator(f"#task-{failing}")).to_have_attribute("data-status", "FAILURE")
    screenshot(page, "tasks")

    # The filtered URL is shareable: loading it directly gives the same list.
    page.goto("/tasks?task_type=ORDER&status=SUCCESS")
    expect(page.locator("#task-rows tr[id^=task-]")).to_have_count(1)
    expect(page.locator("#filter-form input[name=task_type]")).to_have_value("ORDER")

    # Open the task.
    page.click(f"#task-{ordered} a")
    page.wait_for_url(re.compile(rf"/tasks/{ordered}$"))
    expect(page.locator("#task-status")).to_have_attribute("data-status", "SUCCESS")
    expect(page.locator("#task-payload")).to_contain_text('"customer": "ACME"')
    expect(page.locator("#task-result")).to_contain_text('"amount": 3')
    expect(page.locator("#timeline li")).to_have_count(3)  # submitted, claimed, succeeded
    screenshot(page, "task-detail")

    page.goto(f"/tasks/{failing}")
    expect(page.locator("#task-error")).to_contain_text("bad input, retrying will not help")
    screenshot(page, "task-detail-failure")


def test_cancel_a_pending_task(page: Any, live_console: LiveConsole) -> None:
    task_id = submit(live_console, "NOOP", {"wait": "forever"}, run_at=FAR_FUTURE)
    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_attribute("data-status", "PENDING")
    expect(page.locator("#retry-button")).to_have_count(0)
    page.click("#cancel-button")  # hx-confirm: accepted by the context's dialog handler
    expect(page.locator("#task-status")).to_have_attribute("data-status", "CANCELLED")
    expect(page.locator("#cancel-button")).to_have_count(0)
    expect(page.locator("#messages")).to_contain_text(f"Task {task_id} cancelled.")
    expect(page.locator("#timeline")).to_contain_text("by olga")
    assert status_of(live_console, task_id) == "CANCELLED"


def test_retry_a_failed_task(page: Any, live_console: LiveConsole) -> None:
    task_id = submit(live_console, "FATAL", {"attempt": "again"})
    wait_for_status(live_console, task_id, "FAILURE")
    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_attribute("data-status", "FAILURE")
    expect(page.locator("#cancel-button")).to_have_count(0)
    page.click("#retry-button")
    expect(page.locator("#timeline")).to_contain_text("Retried by an operator")
    # FATAL fails again on its second attempt: the live page follows it back to FAILURE.
    expect(page.locator(".attempts tbody tr")).to_have_count(2, timeout=20_000)
    expect(page.locator("#task-status")).to_have_attribute("data-status", "FAILURE", timeout=20_000)
    expect(page.locator("#retry-button")).to_be_visible()
    with live_console.app.app_context():
        from webapp.extensions import db

        retried = db.session.query(TaskEvent).filter_by(task_id=task_id, kind="RETRIED").one()
        assert retried.actor == "olga"


def test_status_updates_live_on_list_and_detail(page: Any, live_console: LiveConsole) -> None:
    run_at = (utcnow() + timedelta(seconds=3)).isoformat()
    task_id = submit(live_console, "SLEEP", {"seconds": 2}, run_at=run_at)
    detail = page.context.new_page()
    page.goto(f"/tasks?id={task_id}")
    detail.goto(f"/tasks/{task_id}")
    record_statuses(page, f"#task-{task_id}")
    record_statuses(detail, "#task-status")

    expect(page.locator(f"#task-{task_id}")).to_have_attribute("data-status", "SUCCESS", timeout=20_000)
    expect(detail.locator("#task-status")).to_have_attribute("data-status", "SUCCESS", timeout=20_000)
    for tab in (page, detail):
        assert tab.evaluate("window.__marker") == "no reload"
        assert tab.evaluate("window.__seen") == ["PENDING", "PROCESSING", "SUCCESS"]
    expect(detail.locator("#task-result")).to_contain_text('"slept": 2')
    expect(detail.locator("#task-fields")).to_contain_text("SUCCESS")  # refreshed out of band

    # Terminal everywhere: both pages stop polling.
    requests: list[str] = []
    for tab in (page, detail):
        tab.on("request", lambda request: requests.append(request.url))
    time.sleep(3.5)
    assert [url for url in requests if "/tasks" in url] == []


def test_bulk_cancel_keeps_selection_across_refreshes(page: Any, live_console: LiveConsole) -> None:
    ids = [submit(live_console, "NOOP", {"n": n}, created_by="bulk-browser", run_at=FAR_FUTURE) for n in range(3)]
    page.goto("/tasks?created_by=bulk-browser")
    page.check(f"#select-{ids[0]}")
    page.check(f"#select-{ids[1]}")
    expect(page.locator("#selected-count")).to_have_text("(2)")
    # The rows poll every 1.5 s while they can change; the ticks must survive a refresh.
    with page.expect_response(lambda r: "/tasks?created_by=bulk-browser" in r.url
                              and r.request.headers.get("hx-target") == "task-rows"):
        pass
    expect(page.locator(f"#select-{ids[0]}")).to_be_checked()
    expect(page.locator(f"#select-{ids[1]}")).to_be_checked()
    expect(page.locator(f"#select-{ids[2]}")).not_to_be_checked()

    page.click("#bulk-selected")
    expect(page.locator("#bulk-total")).to_have_text("2")
    expect(page.locator("#bulk-cancel")).to_contain_text("Cancel 2 tasks")
    expect(page.locator("#bulk-retry")).to_have_count(0)  # only the actions that apply
    page.click("#bulk-cancel")
    expect(page.locator("#bulk-panel")).to_contain_text("2 tasks cancelled")
    expect(page.locator(f"#task-{ids[0]}")).to_have_attribute("data-status", "CANCELLED")
    expect(page.locator(f"#task-{ids[1]}")).to_have_attribute("data-status", "CANCELLED")
    expect(page.locator(f"#task-{ids[2]}")).to_have_attribute("data-status", "PENDING")
    assert [status_of(live_console, i) for i in ids] == ["CANCELLED", "CANCELLED", "PENDING"]


def test_xss_payload_is_inert(page: Any, live_console: LiveConsole, problems: BrowserProblems) -> None:
    task_id = submit(live_console, "NOOP", {"html": XSS_IMG, "script": XSS_SCRIPT},
                     created_by="<svg onload=alert(3)>")
    page.goto(f"/tasks?id={task_id}")
    expect(page.locator(f"#task-{task_id}")).to_have_attribute("data-status", "SUCCESS", timeout=20_000)
    expect(page.locator(f"#task-{task_id}")).to_contain_text("<svg onload=alert(3)>")
    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#task-payload")).to_contain_text(XSS_IMG)
    expect(page.locator("#task-payload")).to_contain_text(XSS_SCRIPT)
    expect(page.locator("#task-result")).to_contain_text(XSS_IMG)  # NOOP echoes the payload
    assert page.locator("main img, main svg[onload], main script").count() == 0
    page.wait_for_timeout(1000)
    assert problems.dialogs == []


def test_pages_are_readable_and_usable_without_javascript(browser: Any, live_console: LiveConsole) -> None:
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, javascript=False)
    try:
        tab = context.new_page()
        log_in(tab)
        task_id = submit(live_console, "NOOP", {"no": "js"}, run_at=FAR_FUTURE)
        tab.goto("/tasks?status=PENDING")
        expect(tab.locator(f"#task-{task_id}")).to_have_attribute("data-status", "PENDING")
        tab.goto(f"/tasks/{task_id}")
        expect(tab.locator("#task-payload")).to_contain_text('"no": "js"')
        tab.click("#cancel-button")  # a plain form POST, then a redirect back
        tab.wait_for_url(re.compile(rf"/tasks/{task_id}$"))
        expect(tab.locator("#task-status")).to_have_attribute("data-status", "CANCELLED")
        expect(tab.locator("#messages")).to_contain_text("cancelled")
    finally:
        context.close()
    assert status_of(live_console, task_id) == "CANCELLED"


def test_screenshots_of_a_busy_console(page: Any, live_console: LiveConsole) -> None:
    """A console with an hour of history, for the screenshots in docs/screenshots/."""
    from sqlalchemy import update

    from webapp.extensions import db
    from webapp.tasks.models import AsyncTask

    with live_console.app.app_context():
        service = AsyncTaskService()
        finished = service.submit_many(
            [{"task_type": "ORDER", "payload": {"customer": f"customer-{n}", "amount": 10 + n},
              "created_by": "shop@example.com"} for n in range(40)]
            + [{"task_type": "FATAL", "payload": {"row": n}, "created_by": "import-job"} for n in range(6)])
        finished_ids = [task.id for task in finished]
        retried = service.submit_task("EXPO_FAIL", {"source": "nightly-sync"}, created_by="ops@example.com").id
        running = service.submit_task("SLEEP", {"seconds": 6, "tag": "report"}, created_by="ops@example.com").id
        for n in range(3):
            service.submit_task("NOOP", {"batch": n}, priority=5 - n, run_at=FAR_FUTURE, created_by="scheduler")
    wait_until(lambda: all(status_of(live_console, i) in ("SUCCESS", "FAILURE") for i in finished_ids),
               timeout=30, message="the seeded tasks to finish")
    with live_console.app.app_context():
        now = utcnow()
        for index, task_id in enumerate(finished_ids):  # spread the outcomes over the last hour
            db.session.execute(update(AsyncTask).where(AsyncTask.id == task_id)
                               .values(finished_at=now - timedelta(minutes=(index * index * 7) % 57, seconds=5)))
        db.session.commit()
    wait_for_status(live_console, running, "PROCESSING")

    page.goto("/")
    expect(page.locator("#count-PROCESSING .count")).not_to_have_text("0")
    assert page.locator("#throughput-chart rect.bar-ok").count() > 10  # minutes with successes
    screenshot(page, "docs-overview")

    page.goto("/tasks")
    expect(page.locator(f"#task-{running}")).to_have_attribute("data-status", "PROCESSING")
    screenshot(page, "docs-tasks", full_page=False)

    wait_for_status(live_console, retried, "FAILURE", timeout=30)
    page.goto(f"/tasks/{retried}")
    expect(page.locator(".attempts tbody tr")).to_have_count(4)
    page.locator("#task-live details").first.evaluate("element => element.open = true")
    screenshot(page, "docs-task-detail")
