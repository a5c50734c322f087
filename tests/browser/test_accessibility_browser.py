"""Accessibility in Chromium: axe-core finds no serious or critical violation on any console page,
in the light and the dark theme, with data in every status on the pages (issue 16).

axe-core comes with the ``axe-playwright-python`` package (its ``axe.min.js``, MPL-2.0); it is
injected into each page and run there, nothing is downloaded. The theme follows the system
preference (``prefers-color-scheme``), which the browser context emulates.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from flask_mail import Message
from sqlalchemy.exc import OperationalError

from tests.a11y_processors import HOLD_RELEASE
from tests.browser.conftest import BrowserProblems, LiveConsole, log_in, open_context
from tests.conftest import wait_until
from tests.console_support import add_user
from webapp.accounts.tokens import create_token, revoke_token
from webapp.extensions import db
from webapp.notifications.dev_mail import write_dev_mail
from webapp.schedules.service import ScheduleService
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import Notification, utcnow

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480)]  # ~30 pages, axe on each, on a loaded machine

CONSOLE_PROCESSORS = ["tests.processors", "tests.workflow_processors", "tests.a11y_processors"]
DEV_MAIL_DIR = Path(tempfile.gettempdir()) / f"taskdeck-a11y-dev-mail-{os.getpid()}"
CONSOLE_CONFIG = {"ASYNC_TASK_DEV_MAIL_DIR": str(DEV_MAIL_DIR)}
ADMIN = "ada"
AXE_SCRIPT = files("axe_playwright_python").joinpath("axe.min.js")
BLOCKING = ("serious", "critical")
FAR_FUTURE = "2999-01-01T00:00:00Z"
SQLITE_LOCK_ATTEMPTS = 5
# A date, or a date and time, as HTML (and the W3C validator) accepts it: at most three fraction digits.
HTML_DATETIME = re.compile(r"\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d{1,3})?)?(Z|[+-]\d\d:?\d\d)?)?")


def _status(live: LiveConsole, task_id: int) -> str:
    with live.app.app_context():
        return AsyncTaskService().require_task(task_id).status


def _add_notifications(task_id: int) -> None:
    """Outbox rows in every status, as the engine leaves them (the console only reads them)."""
    now = utcnow()
    for status, kind, recipient, error in (
            ("PENDING", "EMAIL", "bob@example.com", None), ("SENT", "EMAIL", "ann@example.com", None),
            ("FAILED", "EMAIL", "eve@example.com", "SMTP said 550 no such user"),
            ("SKIPPED", "WEBHOOK", "https://hooks.example/x", "private address refused")):
        db.session.add(Notification(task_id=task_id, type=kind, recipient=recipient, subject=f"Task {task_id}",
                                    status=status, attempts=8 if status == "FAILED" else 1, max_attempts=8,
                                    last_error=error, created_at=now, updated_at=now,
                                    next_attempt_at=now + timedelta(days=365),
                                    sent_at=now if status == "SENT" else None))
    db.session.commit()


@pytest.fixture(scope="module")
def seeded(live_console: LiveConsole) -> Iterator[dict[str, str]]:
    """Tasks in every status, a paused type, a workflow, a schedule with a run, notifications in
    every status, tokens (active and revoked), captured mails and the audit rows all this left.
    Answers the paths of the pages that show one of them."""
    app = live_console.app
    add_user(app, ADMIN, "admin")
    shutil.rmtree(DEV_MAIL_DIR, ignore_errors=True)

    def step(action: Callable[[], Any]) -> Any:
        """One write in its own app context, tried again when SQLite refuses it: a plain (deferred)
        transaction that read first cannot take the write lock while the consumer holds it."""
        for attempt in range(1, SQLITE_LOCK_ATTEMPTS + 1):
            with app.app_context():
                try:
                    return action()
                except OperationalError as exc:
                    db.session.rollback()
                    if "locked" not in str(exc) or attempt == SQLITE_LOCK_ATTEMPTS:
                        raise

    service = AsyncTaskService
    succeeded = step(lambda: service().submit_task("NOOP", {"n": 1}, created_by="ann@example.com").id)
    failed = step(lambda: service().submit_task("FATAL", {"order": 7}, created_by="ann@example.com").id)
    retrying = step(lambda: service().submit_task("A11Y_RETRY_LATER", {}).id)
    running = step(lambda: service().submit_task("A11Y_HOLD", {}).id)
    cancelled = step(lambda: service().submit_task("NOOP", {"n": 2}, run_at=FAR_FUTURE).id)
    step(lambda: service().cancel_task(cancelled, actor="a11y-test"))
    step(lambda: service().submit_task("NOOP", {"n": 3}, run_at=FAR_FUTURE))  # PENDING, due later
    step(lambda: service().pause_task_type("WF_ADD", actor="a11y-test"))  # its workflow waits: PENDING, WAITING
    workflow = step(lambda: service().submit_workflow(
        name="a11y-diamond",
        tasks=[{"key": "extract", "task_type": "WF_ADD", "payload": {"n": 1}},
               {"key": "load", "task_type": "WF_ADD", "payload": {"n": 2}, "after": ["extract"]}],
        callbacks={"on_success": {"task_type": "WF_CALLBACK", "payload": {}}}).workflow_id)
    step(lambda: ScheduleService().create({"name": "a11y-hourly", "task_type": "NOOP", "interval_seconds": 3600,
                                           "payload": {}, "description": "checked by the accessibility test"},
                                          actor="a11y-test"))
    step(lambda: ScheduleService().run_now("a11y-hourly", actor="a11y-test"))
    step(lambda: create_token("a11y-active", actor="a11y-test"))
    step(lambda: create_token("a11y-revoked", actor="a11y-test"))
    step(lambda: revoke_token("a11y-revoked", actor="a11y-test"))
    step(lambda: _add_notifications(failed))
    message = Message(subject=f"Task {failed} failed", recipients=["ann@example.com"],
                      sender="taskdeck@localhost", body="FATAL failed: bad input.")
    with app.app_context():
        write_dev_mail(str(DEV_MAIL_DIR), message, 1)
    for task_id, status in ((succeeded, "SUCCESS"), (failed, "FAILURE"), (retrying, "RETRYING"),
                            (running, "PROCESSING")):
        wait_until(lambda task_id=task_id, status=status: _status(live_console, task_id) == status,
                   timeout=60, message=f"task {task_id} is {status}")
    pages = {
        "login": "/login",
        "overview": "/",
        "tasks": "/tasks",
        "tasks filtered": "/tasks?status=FAILURE&status=RETRYING",
        "tasks, a filter refused": "/tasks?priority_min=high",
        "task not found": "/tasks/999999",
        "task failed": f"/tasks/{failed}",
        "task running": f"/tasks/{running}",
        "task retrying": f"/tasks/{retrying}",
        "edit and retry": f"/tasks/{failed}/edit-retry",
        "bulk preview": "/tasks/bulk?scope=matching&status=FAILURE",
        "new task": "/tasks/new",
        "new task form": "/tasks/new?task_type=ORDER",
        "task types": "/task-types",
        "workers": "/workers",
        "notifications": "/notifications",
        "dev outbox": "/notifications/dev-mail",
        "audit": "/audit",
        "users": "/admin/users",
        "tokens": "/admin/tokens",
        "schedules": "/schedules",
        "schedule": "/schedules/a11y-hourly",
        "new schedule": "/schedules/new",
        "workflows": "/workflows",
        "workflow": f"/workflows/{workflow}",
        "password": "/account/password",
    }
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    optional = {"limits": ("/limits", "/limits"), "history": ("/history", "/history?range=24h"),
                "task type": ("/task-types/<task_type>", "/task-types/FATAL")}
    pages.update({name: path for name, (rule, path) in optional.items() if rule in rules})
    try:
        yield pages
    finally:
        HOLD_RELEASE.set()
        shutil.rmtree(DEV_MAIL_DIR, ignore_errors=True)


def _axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (every rule it runs by default)."""
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return list(result["violations"])


def _describe(where: str, violation: dict[str, Any]) -> str:
    lines = [f"{where}: [{violation['impact']}] {violation['id']}: {violation['help']}"]
    for node in violation["nodes"][:8]:
        summary = (node.get("failureSummary") or "").replace("\n", " ")
        lines.append(f"    {' '.join(node['target'])}: {node['html'][:160]}\n      {summary[:300]}")
    if len(violation["nodes"]) > 8:
        lines.append(f"    … and {len(violation['nodes']) - 8} more")
    return "\n".join(lines)


def _check_pages(browser: Any, live_console: LiveConsole, pages: dict[str, str], theme: str,
                 locale: str = "en-US") -> list[str]:
    """Visit ``pages`` in order (those before "overview" logged out, then as the admin) and
    answer their serious and critical violations, described (and any malformed ``<time datetime>``)."""
    problems = BrowserProblems()
    context = open_context(browser, live_console, problems, color_scheme=theme, locale=locale)
    # Into every page before its own scripts, through the browser (a script tag would break the CSP).
    context.add_init_script(script=AXE_SCRIPT.read_text(encoding="utf-8"))
    found: list[str] = []
    checked: list[str] = []
    times_seen = 0
    try:
        page = context.new_page()
        for name, path in pages.items():
            if name == "overview":
                log_in(page, ADMIN)
            page.goto(path)
            page.wait_for_load_state("load")
            assert page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") == (theme == "dark")
            assert page.evaluate("document.documentElement.lang").startswith(locale[:2]), path
            found += [_describe(f"{theme} {locale} {name} ({path})", violation)
                      for violation in _axe_violations(page) if violation["impact"] in BLOCKING]
            times = page.eval_on_selector_all("time[datetime]", "all => all.map(t => t.dateTime)")
            found += [f"{name} ({path}): <time datetime={value!r}> is not a valid HTML date and time"
                      for value in times if not HTML_DATETIME.fullmatch(value)]
            times_seen += len(times)
            checked.append(name)
    finally:
        context.close()
    assert checked == list(pages)
    assert times_seen > 0  # the datetime check saw something
    assert problems.page_errors == [], problems.page_errors
    assert [text for text in problems.console_errors if "Content Security Policy" in text] == []
    return found


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_no_serious_or_critical_violation_on_any_page(browser: Any, live_console: LiveConsole,
                                                      seeded: dict[str, str], theme: str) -> None:
    found = _check_pages(browser, live_console, seeded, theme)
    assert found == [], f"{len(found)} serious or critical axe violation(s):\n" + "\n".join(found)


def test_the_chinese_pages_too(browser: Any, live_console: LiveConsole, seeded: dict[str, str]) -> None:
    """Other words, other widths, the page's language (lang="zh-Hans"): the main pages again."""
    pages = {name: seeded[name] for name in ("login", "overview", "tasks", "task failed", "task running",
                                              "notifications", "tokens", "schedule", "workflow", "new task form")}
    found = _check_pages(browser, live_console, pages, "light", locale="zh-CN")
    assert found == [], f"{len(found)} serious or critical axe violation(s):\n" + "\n".join(found)
