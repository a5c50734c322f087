"""Issue 16 in Chromium: one clock (local time or UTC) with a filter typed in GMT+8, the task list's
footer following live rows, the bulk preview under its button, /task-types within a 1400 px
window, the filter bar's priority pair on one row, and no console error on any page."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import BrowserProblems, LiveConsole, log_in, open_context, screenshot
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AsyncTask

CONSOLE_PROCESSORS = ["tests.processors", "tests.long_name_processors"]


def submit(live: LiveConsole, task_type: str, payload: dict, **kwargs: Any) -> int:
    with live.app.app_context():
        try:
            return AsyncTaskService().submit_task(task_type, payload, **kwargs).id
        finally:
            db.session.remove()


def set_created_at(live: LiveConsole, task_id: int, moment: datetime) -> None:
    with live.app.app_context():
        try:
            db.session.execute(db.update(AsyncTask).where(AsyncTask.id == task_id).values(created_at=moment))
            db.session.commit()
        finally:
            db.session.remove()


def test_one_clock_switch_and_a_filter_typed_in_gmt8(browser: Any, live_console: LiveConsole) -> None:
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, timezone_id="Asia/Shanghai", locale="en-GB")
    try:
        tab = context.new_page()
        log_in(tab)
        task_id = submit(live_console, "NOOP", {"clock": "east"}, created_by="clock-test")
        set_created_at(live_console, task_id, datetime(2026, 1, 1, 1, 30, tzinfo=UTC))  # 09:30 in Shanghai
        tab.goto("/tasks?created_by=clock-test")
        expect(tab.locator("#clock-select option:checked")).to_have_text("Local time (Asia/Shanghai)")
        created = tab.locator(f"#task-{task_id} td time").first
        expect(created).to_have_text("2026-01-01 09:30:00 UTC+8")
        expect(created).to_have_attribute("title", "2026-01-01 01:30:00 UTC")
        expect(tab.locator("#filter-form")).to_contain_text("Created after (UTC+8)")

        # 09:00 to 10:00 typed in Shanghai time holds 01:30 UTC; 10:00 to 11:00 does not.
        tab.fill("#filter-form input[name=created_after]", "2026-01-01T09:00:00")
        tab.fill("#filter-form input[name=created_before]", "2026-01-01T10:00:00")
        tab.click("#filter-form button[type=submit]")
        expect(tab).to_have_url(re.compile(r"created_after=2026-01-01T01%3A00%3A00Z"))
        expect(tab.locator(f"#task-{task_id}")).to_be_visible()
        screenshot(tab, "clock-local-gmt8", full_page=False)
        tab.fill("#filter-form input[name=created_after]", "2026-01-01T10:00:00")
        tab.fill("#filter-form input[name=created_before]", "2026-01-01T11:00:00")
        tab.click("#filter-form button[type=submit]")
        expect(tab.locator(f"#task-{task_id}")).to_have_count(0)

        # UTC: the same filter now means 10:00 to 11:00 UTC, and every time says UTC.
        tab.select_option("#clock-select", "utc")
        expect(tab.locator("body")).to_have_attribute("data-clock", "utc")
        expect(tab.locator("#filter-form input[name=created_after]")).to_have_value(re.compile(r"^2026-01-01T02:00(:00)?$"))
        expect(tab.locator("#filter-form")).to_contain_text("Created after (UTC)")
        tab.fill("#filter-form input[name=created_after]", "2026-01-01T01:00:00")
        tab.fill("#filter-form input[name=created_before]", "2026-01-01T02:00:00")
        tab.click("#filter-form button[type=submit]")
        expect(tab.locator(f"#task-{task_id} td time").first).to_have_text("2026-01-01 01:30:00 UTC")
        tab.goto(f"/tasks/{task_id}")
        shown = tab.locator("main").inner_text()
        assert "UTC+8" not in shown and "01:30:00 UTC" in shown, shown[:2000]

        # The choice is the user's: a new browser in the same zone gets UTC too.
        other = context.browser.new_context(base_url=live_console.url, timezone_id="Asia/Shanghai")
        try:
            second = other.new_page()
            log_in(second)
            second.goto(f"/tasks/{task_id}")
            expect(second.locator("body")).to_have_attribute("data-clock", "utc")
            second.select_option("#clock-select", "local")  # and back, for the other tests
            expect(second.locator("body")).to_have_attribute("data-clock", "local")
            expect(second.locator("#task-fields")).to_contain_text("2026-01-01 09:30:00 UTC+8")
        finally:
            other.close()
    finally:
        context.close()
    assert problems.page_errors == [] and problems.dialogs == [] and problems.console_errors == []


def test_the_footer_count_follows_live_rows(page: Any, live_console: LiveConsole) -> None:
    first = submit(live_console, "SLEEP", {"seconds": 6})
    page.goto("/tasks?task_type=SLEEP")
    expect(page.locator(f"#task-{first}")).to_be_visible()
    expect(page.locator("#task-count")).to_contain_text("1 shown")
    second = submit(live_console, "SLEEP", {"seconds": 6})
    expect(page.locator(f"#task-{second}")).to_be_visible(timeout=15_000)  # the live refresh brings it
    expect(page.locator("#task-count")).to_contain_text("2 shown")


def test_the_bulk_preview_opens_under_its_button(page: Any, live_console: LiveConsole) -> None:
    task_id = submit(live_console, "NOOP", {"bulk": "below"}, run_at="2099-01-01T00:00:00Z", created_by="bulk-pos")
    page.goto("/tasks?created_by=bulk-pos")
    page.check(f"#select-{task_id}")
    page.click("#bulk-selected")
    expect(page.locator("#bulk-total")).to_have_text("1")
    expect(page.locator("#bulk-panel")).to_contain_text("1 task selected")
    expect(page.locator("#bulk-cancel")).to_contain_text("Cancel 1 task")
    button = page.locator("#bulk-selected").bounding_box()
    panel = page.locator("#bulk-preview").bounding_box()
    assert button and panel and panel["y"] >= button["y"] + button["height"] - 1, (button, panel)
    assert panel["y"] - (button["y"] + button["height"]) < 60, (button, panel)  # right under it


def test_task_types_fit_1400_px_and_the_priority_pair_stays_together(page: Any, live_console: LiveConsole) -> None:
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto("/task-types")
    expect(page.locator("#task-types")).to_contain_text("IMPORT_CUSTOMER_ORDERS_FROM_THE_LEGACY_WAREHOUSE")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1400, f"/task-types is {width} px wide in a 1400 px window"
    screenshot(page, "task-types-1400", full_page=False)
    for viewport in (1400, 1100, 900, 700):
        page.set_viewport_size({"width": viewport, "height": 900})
        page.goto("/tasks")
        low = page.locator("input[name=priority_min]").bounding_box()
        high = page.locator("input[name=priority_max]").bounding_box()
        assert low and high and abs(low["y"] - high["y"]) < 2, (viewport, low, high)
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport, viewport


def test_no_console_error_on_any_page(browser: Any, live_console: LiveConsole) -> None:
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems)
    try:
        tab = context.new_page()
        log_in(tab)
        task_id = submit(live_console, "NOOP", {"pages": "all"})
        pages = ["/", "/tasks", f"/tasks/{task_id}", "/tasks/new", "/task-types", "/workers", "/schedules",
                 "/workflows", "/notifications", "/audit", "/account/password"]
        for path in pages:
            tab.goto(path)
            tab.wait_for_load_state("networkidle")
            tab.wait_for_timeout(2500)  # a live part's first refresh (1.5 to 2 s) has run
        # With a box ticked and a filter applied the rows' refresh includes what it names too.
        tab.goto("/tasks")
        tab.check(f"#select-{task_id}")
        tab.wait_for_timeout(2500)
    finally:
        context.close()
    assert problems.console_errors == [], problems.console_errors
    assert problems.page_errors == [], problems.page_errors


def test_a_page_rendered_before_the_zone_was_known_is_rendered_again_in_it(browser: Any,
                                                                          live_console: LiveConsole) -> None:
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, timezone_id="Asia/Shanghai")
    try:
        tab = context.new_page()
        log_in(tab)
        task_id = submit(live_console, "NOOP", {"clock": "late"})
        set_created_at(live_console, task_id, datetime(2026, 1, 1, 1, 30, tzinfo=UTC))
        # As if the browser's zone were not known yet (a new zone, a cookie lost): the server renders
        # UTC, the script reports the zone and the page comes back once, in Shanghai time.
        context.clear_cookies(name="console_tz")
        tab.goto(f"/tasks/{task_id}")
        expect(tab.locator("body")).to_have_attribute("data-clock-zone", "Asia/Shanghai")
        expect(tab.locator("#task-fields")).to_contain_text("2026-01-01 09:30:00 UTC+8")
        assert any(cookie["name"] == "console_tz" and cookie["value"] == "Asia/Shanghai"
                   for cookie in context.cookies())
    finally:
        context.close()
    assert problems.page_errors == [] and problems.console_errors == []


def test_without_javascript_local_time_is_utc_and_says_so(browser: Any, live_console: LiveConsole) -> None:
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, javascript=False, timezone_id="Asia/Shanghai")
    try:
        tab = context.new_page()
        log_in(tab)
        expect(tab.locator("#clock-select option:checked")).to_have_text("Local time (not known yet: UTC)")
        expect(tab.locator(".clock-apply")).to_be_visible()  # no script to apply the choice on change
    finally:
        context.close()
