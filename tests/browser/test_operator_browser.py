"""Operator power features in Chromium: progress bars, cancel of a running task, pause and resume,
edit and retry, search, keyboard, local times, the Chinese console and the dark theme.

The console runs the example processors (``webapp.examples``: IMPORT_FILE reports progress and
honours cancel requests) next to the tests' own.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import BrowserProblems, LiveConsole, log_in, open_context, screenshot
from tests.conftest import wait_until
from webapp.tasks import AsyncTaskService

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

CONSOLE_PROCESSORS = ["tests.processors", "webapp.examples"]


def submit(live: LiveConsole, task_type: str, payload: dict, **kwargs: Any) -> int:
    with live.app.app_context():
        return AsyncTaskService().submit_task(task_type, payload, **kwargs).id


def status_of(live: LiveConsole, task_id: int) -> str:
    with live.app.app_context():
        return AsyncTaskService().require_task(task_id).status


def wait_for_status(live: LiveConsole, task_id: int, status: str, timeout: float = 20) -> None:
    wait_until(lambda: status_of(live, task_id) == status, timeout=timeout,
               message=f"task {task_id} to reach {status}")


def sample(page: Any, name: str, expression: str) -> None:
    """Record every new value of a JS expression, every 50 ms, into window[name] (survives swaps)."""
    page.evaluate("""([name, expression]) => {
        window[name] = [];
        const read = new Function("return (" + expression + ");");
        setInterval(() => {
            const value = read();
            const seen = window[name];
            if (value !== null && value !== undefined && seen[seen.length - 1] !== value) seen.push(value);
        }, 50);
    }""", [name, expression])


def keep_screenshot(page: Any, name: str, full_page: bool = False) -> None:
    """A screenshot under test-artifacts/docs-NAME.png (the ones in docs/screenshots/ come from these)."""
    screenshot(page, f"docs-{name}", full_page=full_page)


def test_progress_bar_moves_on_a_slow_import(page: Any, live_console: LiveConsole) -> None:
    task_id = submit(live_console, "IMPORT_FILE", {"file": "customers.csv", "rows": 80, "seconds": 8})
    page.goto(f"/tasks?id={task_id}")
    bar = page.get_by_role("progressbar", name=f"Progress of task {task_id}")
    expect(bar).to_be_visible(timeout=10_000)
    sample(page, "__progress", f"document.querySelector('#task-{task_id} progress')?.value")
    expect(page.locator(f"#task-{task_id} .progress-message")).to_contain_text(re.compile(r"row \d+ of 80"))

    detail = page.context.new_page()
    detail.goto(f"/tasks/{task_id}")
    sample(detail, "__progress", "document.querySelector('#task-live progress')?.value")
    detail_bar = detail.get_by_role("progressbar", name=f"Progress of task {task_id}")
    expect(detail_bar).to_be_visible()
    keep_screenshot(detail, "progress-detail")
    keep_screenshot(page, "progress")

    expect(detail.locator("#task-status")).to_have_attribute("data-status", "SUCCESS", timeout=20_000)
    expect(page.locator(f"#task-{task_id}")).to_have_attribute("data-status", "SUCCESS", timeout=20_000)
    for tab in (page, detail):
        values = tab.evaluate("window.__progress")
        assert len(values) >= 2, values  # it moved, live (the list refreshes every 1.5 s, the page every 1 s)
        assert values == sorted(values) and 0 < values[0] < values[-1] <= 100, values
        assert tab.locator("progress").count() == 0  # finished: no bar any more


def test_cancel_a_running_task_and_a_request_that_comes_too_late(page: Any, live_console: LiveConsole) -> None:
    task_id = submit(live_console, "IMPORT_FILE", {"file": "big.csv", "rows": 300, "seconds": 30})
    wait_for_status(live_console, task_id, "PROCESSING")
    page.goto(f"/tasks/{task_id}")
    expect(page.locator("#task-status")).to_have_attribute("data-status", "PROCESSING")
    sample(page, "__flag", "document.querySelector('#cancel-requested') ? 'requested' : 'none'")
    expect(page.locator("#cancel-button")).to_have_text("Request cancel")
    page.click("#cancel-button")  # hx-confirm accepted by the context's dialog handler
    expect(page.locator("#task-status")).to_have_attribute("data-status", "CANCELLED", timeout=10_000)
    assert "requested" in page.evaluate("window.__flag")  # the page showed the request while it ran
    timeline = page.locator("#timeline")
    expect(timeline.locator("li[data-kind=CANCEL_REQUESTED]")).to_contain_text("Cancel requested by an operator")
    expect(timeline.locator("li[data-kind=CANCEL_REQUESTED]")).to_contain_text("by olga")
    expect(timeline.locator("li[data-kind=CANCELLED]")).to_be_visible()
    expect(page.locator("#cancel-button")).to_have_count(0)
    expect(page.locator("#edit-retry-link")).to_be_visible()  # a cancelled task can be edited and retried

    ignored = submit(live_console, "IGNORES_CANCEL", {"seconds": 2.5})
    wait_for_status(live_console, ignored, "PROCESSING")
    page.goto(f"/tasks/{ignored}")
    page.click("#cancel-button")
    expect(page.locator("#cancel-requested")).to_be_visible()
    expect(page.locator("#task-status")).to_have_attribute("data-status", "SUCCESS", timeout=10_000)
    expect(page.locator("#timeline li[data-kind=CANCEL_TOO_LATE]")).to_contain_text("Cancel request not honoured")
    expect(page.locator("#cancel-requested")).to_have_count(0)


def test_pause_stops_claims_and_resume_restarts_them(page: Any, live_console: LiveConsole) -> None:
    page.goto("/task-types")
    page.click("#pause-NOOP")
    expect(page.locator("#messages")).to_contain_text("NOOP paused")
    expect(page.locator("#type-NOOP .badge[data-status=PAUSED]")).to_have_text("paused")
    held = submit(live_console, "NOOP", {"held": True})
    page.goto(f"/tasks?id={held}")
    time.sleep(1.5)  # a worker polls every 0.2 s: long enough to have claimed it if it could
    assert status_of(live_console, held) == "PENDING"
    expect(page.locator(f"#task-{held}")).to_have_attribute("data-status", "PENDING")
    page.goto("/task-types")
    page.click("#resume-NOOP")
    expect(page.locator("#messages")).to_contain_text("NOOP resumed")
    page.goto(f"/tasks?id={held}")
    expect(page.locator(f"#task-{held}")).to_have_attribute("data-status", "SUCCESS", timeout=10_000)

    # Everything at once, from the overview.
    page.goto("/")
    page.click("#pause-all")
    expect(page.locator("#claiming")).to_have_attribute("data-all-paused", "true")
    expect(page.locator("#claiming-state")).to_contain_text("All task types are paused")
    held = submit(live_console, "SLEEP", {"seconds": 0.1})
    time.sleep(1.5)
    assert status_of(live_console, held) == "PENDING"
    keep_screenshot(page, "paused")
    page.click("#resume-all")
    expect(page.locator("#claiming")).to_have_attribute("data-all-paused", "false")
    wait_for_status(live_console, held, "SUCCESS", timeout=10)


def test_edit_and_retry_creates_a_linked_task(page: Any, live_console: LiveConsole) -> None:
    original = submit(live_console, "IMPORT_FILE", {"file": "orders.csv", "rows": 50, "seconds": 0.5,
                                                    "fail_at_row": 37})
    wait_for_status(live_console, original, "FAILURE")
    page.goto(f"/tasks/{original}")
    expect(page.locator("#task-error")).to_contain_text("row 37: invalid date")
    page.click("#edit-retry-link")
    page.wait_for_url(re.compile(rf"/tasks/{original}/edit-retry$"))
    editor = page.get_by_label("Payload (JSON object)")
    expect(editor).to_have_value(re.compile(r'"fail_at_row": 37'))

    typed = '{\n  "rows": 50,\n  "seconds": 0.5\n}'
    editor.fill(typed)
    page.click("#resubmit-button")
    expect(page.locator("#edit-error")).to_contain_text("payload is missing required field 'file'")
    expect(page.locator("#edit-error")).to_contain_text("payload.file")
    expect(page.get_by_label("Payload (JSON object)")).to_have_value(typed)  # nothing typed is lost
    keep_screenshot(page, "edit-retry")

    page.get_by_label("Payload (JSON object)").fill('{"file": "orders.csv", "rows": 50, "seconds": 0.5}')
    page.click("#resubmit-button")
    page.wait_for_url(re.compile(r"/tasks/\d+$"))
    new_id = int(page.url.rsplit("/", 1)[1])
    assert new_id != original
    expect(page.locator("#resubmitted-from")).to_contain_text(f"#{original}")
    expect(page.locator("#task-status")).to_have_attribute("data-status", "SUCCESS", timeout=15_000)
    page.click(f"#resubmitted-from a[href='/tasks/{original}']")
    expect(page.locator("#resubmitted-as")).to_contain_text(f"#{new_id}")
    expect(page.locator("#timeline li[data-kind=RESUBMITTED]")).to_contain_text("by olga")
    with live_console.app.app_context():
        service = AsyncTaskService()
        assert service.require_task(new_id).parent_id == original
        assert service.require_task(original).payload["fail_at_row"] == 37  # the original is untouched


def test_search_finds_an_error_text_and_the_keyboard_moves_through_rows(page: Any,
                                                                       live_console: LiveConsole) -> None:
    failed = submit(live_console, "IMPORT_FILE", {"file": "ledger-7731.csv", "rows": 5, "seconds": 0.1,
                                                  "fail_at_row": 4})
    others = [submit(live_console, "NOOP", {"ledger": "ledger-7731 copy"}) for _ in range(2)]
    wait_for_status(live_console, failed, "FAILURE")
    page.goto("/tasks")
    page.keyboard.press("/")  # jumps to the search box
    expect(page.locator("#task-search")).to_be_focused()
    page.keyboard.type("7731.CSV: row 4")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/tasks\?search=7731\.CSV%3A\+row\+4$"))
    expect(page.locator("#task-rows tr[id^=task-]")).to_have_count(1)
    expect(page.locator(f"#task-{failed} td.match mark")).to_have_text("7731.csv: row 4")
    expect(page.locator(f"#task-{failed} td.match")).to_contain_text("invalid date")
    keep_screenshot(page, "search")

    page.goto("/tasks?search=ledger-7731")
    expect(page.locator("#task-rows tr[id^=task-]")).to_have_count(3)
    page.locator("h1").click()  # focus leaves the search box
    page.keyboard.press("j")
    first = page.locator("#task-rows tr[id^=task-]").nth(0)
    expect(first).to_have_class(re.compile(r"row-current"))
    expect(first).to_be_focused()
    page.keyboard.press("ArrowDown")
    second = page.locator("#task-rows tr[id^=task-]").nth(1)
    expect(second).to_have_class(re.compile(r"row-current"))
    page.keyboard.press("k")
    expect(first).to_be_focused()
    first_id = first.get_attribute("id")
    assert first_id == f"task-{max(others)}"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(rf"/tasks/{max(others)}$"))


def test_times_in_the_operator_zone_with_utc_on_hover(browser: Any, live_console: LiveConsole) -> None:
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, timezone_id="Asia/Shanghai", locale="en-GB")
    try:
        tab = context.new_page()
        log_in(tab)
        task_id = submit(live_console, "NOOP", {"zone": "east"})
        wait_for_status(live_console, task_id, "SUCCESS")
        tab.goto(f"/tasks/{task_id}")
        created = tab.locator("#timeline li[data-kind=SUBMITTED] time")
        expect(created).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
        utc_title = created.get_attribute("title") or ""
        shown = created.inner_text()
        assert shown.endswith(" UTC+8"), shown
        utc_hour = int(utc_title[11:13])
        assert f"{(utc_hour + 8) % 24:02d}:{utc_title[14:16]}" in shown, (shown, utc_title)
    finally:
        context.close()
    assert problems.page_errors == [] and problems.dialogs == []


def test_chinese_console_after_switching(page: Any, browser: Any, live_console: LiveConsole) -> None:
    failed = submit(live_console, "IMPORT_FILE", {"file": "订单.csv", "rows": 4, "seconds": 0.1, "fail_at_row": 2})
    running = submit(live_console, "IMPORT_FILE", {"file": "客户.csv", "rows": 100, "seconds": 20})
    wait_for_status(live_console, failed, "FAILURE")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.select_option("#language-select", "zh_Hans")  # applied at once by console.js
    expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    expect(page.locator("h1")).to_have_text("概览")
    expect(page.locator("nav[aria-label='主导航']")).to_contain_text("任务")

    page.click("nav >> text=任务")
    page.wait_for_url(re.compile(r"/tasks$"))
    expect(page.locator("h1")).to_have_text("任务")
    expect(page.locator(f"#task-{failed} .badge")).to_have_text("失败")
    expect(page.locator(f"#task-{failed}")).to_have_attribute("data-status", "FAILURE")
    expect(page.get_by_role("progressbar", name=f"任务 {running} 的进度")).to_be_visible(timeout=10_000)
    expect(page.locator(f"#task-{running} .badge")).to_have_text("处理中")
    keep_screenshot(page, "zh")
    page.goto(f"/tasks/{running}")
    page.click("#cancel-button")  # 请求取消
    expect(page.locator("#task-status")).to_have_text("已取消", timeout=10_000)
    expect(page.locator("#timeline li[data-kind=CANCEL_REQUESTED] strong")).to_have_text("操作员请求取消")

    # A browser that prefers Chinese gets it without switching, from the login page on.
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, locale="zh-CN")
    try:
        tab = context.new_page()
        tab.goto("/login")
        expect(tab.locator("h1")).to_have_text("登录")
        expect(tab.get_by_label("用户名")).to_be_visible()
    finally:
        context.close()


def test_dark_theme_follows_the_system_preference(browser: Any, live_console: LiveConsole) -> None:
    for n in range(3):
        submit(live_console, "NOOP", {"dark": n})
    failed = submit(live_console, "IMPORT_FILE", {"file": "night.csv", "rows": 3, "seconds": 0.1, "fail_at_row": 3})
    wait_for_status(live_console, failed, "FAILURE")
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, color_scheme="dark")
    try:
        tab = context.new_page()
        log_in(tab)
        tab.goto("/tasks")
        background = tab.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(part) for part in re.findall(r"\d+", background)[:3])
        assert red + green + blue < 120, background
        badge = tab.locator(f"#task-{failed} .badge")
        assert badge.inner_text() == "FAILURE"  # the status is written out, not only coloured
        tab.locator("#task-search").focus()
        outline = tab.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none"
        keep_screenshot(tab, "dark")
    finally:
        context.close()
    assert problems.page_errors == []
