"""A real console for the browser tests: werkzeug server + in-process consumer + Chromium.

One server, database and consumer per module (tasks from different tests do not interfere:
each test filters by its own ids); one fresh, logged-in browser context per test.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.conftest import IN_CI, ROOT, base_config
from tests.console_support import PASSWORD, add_user
from webapp import create_app
from webapp.extensions import db
from webapp.tasks.consumer import Consumer

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
OPERATOR = "olga"


@dataclass
class LiveConsole:
    """The running console: its app (for arranging data) and its base URL."""

    app: Flask
    url: str


@dataclass
class BrowserProblems:
    """What a page did that it should not: dialogs opened, CSP violations, script errors."""

    dialogs: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def live_console(request: pytest.FixtureRequest, sqlite_template: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveConsole]:
    """A console served on 127.0.0.1 (random port) with a consumer running tasks in-process.

    A test module may set ``CONSOLE_PROCESSORS`` to load other processors than the tests' own,
    and ``CONSOLE_CONFIG`` (a dict) for more settings.
    """
    database = tmp_path_factory.mktemp("browser") / "console.sqlite3"
    shutil.copyfile(sqlite_template, database)
    processors = getattr(request.module, "CONSOLE_PROCESSORS", ["tests.processors"])
    app = create_app(base_config(SQLALCHEMY_DATABASE_URI=f"sqlite:///{database}", ASYNC_TASK_POLL_INTERVAL=0.2,
                                 ASYNC_TASK_PROCESSORS=processors,
                                 **getattr(request.module, "CONSOLE_CONFIG", {})))
    add_user(app, OPERATOR, "operator")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    consumer = Consumer(app, concurrency=2, poll_interval=0.2).start()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="console-test-server", daemon=True)
    thread.start()
    try:
        yield LiveConsole(app, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(timeout=10)
        consumer.stop(grace=5)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (nothing is downloaded)."""
    if not os.path.exists(CHROMIUM):
        message = f"Chromium not found at {CHROMIUM}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


def open_context(browser: Any, live_console: LiveConsole, problems: BrowserProblems,
                 javascript: bool = True, **options: Any) -> Any:
    """A fresh browser context that records dialogs and console errors on every page.

    ``options`` go to Playwright's ``new_context`` (``locale``, ``color_scheme``, ``timezone_id``).
    """
    context = browser.new_context(base_url=live_console.url, viewport={"width": 1280, "height": 900},
                                  java_script_enabled=javascript, **options)
    context.set_default_timeout(15_000)

    def watch(page: Any) -> None:
        def on_dialog(dialog: Any) -> None:
            if dialog.type == "confirm":  # hx-confirm: the operator says yes
                dialog.accept()
                return
            problems.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("console", lambda msg: problems.console_errors.append(f"{msg.text} at {msg.location['url']}")
                if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.page_errors.append(str(exc)))

    context.on("page", watch)
    return context


def log_in(page: Any, username: str = OPERATOR, password: str = PASSWORD) -> None:
    """Log in through the form, as an operator would."""
    page.goto("/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click(".login form button[type=submit]")
    page.wait_for_selector("#overview-live")


@pytest.fixture
def problems() -> BrowserProblems:
    return BrowserProblems()


@pytest.fixture
def page(browser: Any, live_console: LiveConsole, problems: BrowserProblems) -> Iterator[Any]:
    """A logged-in page; after the test, no page may have opened a dialog or broken the CSP."""
    context = open_context(browser, live_console, problems)
    try:
        tab = context.new_page()
        log_in(tab)
        yield tab
    finally:
        context.close()
    assert problems.dialogs == [], problems.dialogs
    assert problems.page_errors == [], problems.page_errors
    blocked = [text for text in problems.console_errors if "Content Security Policy" in text]
    assert blocked == [], blocked


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    """Save a screenshot under test-artifacts/ (gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # caret="initial": hiding the caret makes Playwright put style="" on the focused input,
    # which htmx would then copy while settling a swap and the CSP would (rightly) refuse.
    page.screenshot(path=str(path), full_page=full_page, caret="initial")
    return path
