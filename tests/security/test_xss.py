"""An XSS corpus in everything a user or a processor can put on a console page: payloads, error
messages and tracebacks, task types, creators, idempotency keys, audit actors (login names typed
by anyone), admin form input, and filter values reflected in the page (htmx fragments included).

Two layers are checked separately. The HTML: the raw payload never appears unescaped, and the
parsed page has no inline script, no event-handler attribute, no ``javascript:`` URL and no
htmx attribute an attacker wrote. Then Chromium, with the CSP switched *off* (so escaping alone
must hold), opens the pages, lets htmx poll, and sees no dialog and no injected element.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from flask import Flask
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from tests.console_support import PASSWORD, add_user, csrf_from, logged_in_client
from tests.security.support import FAR_FUTURE, failed_task
from tests.security.xss_processors import FAILING_TASK_TYPE, MARKUP_TASK_TYPE
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult

CORPUS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "'><svg onload=alert(3)>",
    "javascript:alert(4)",
    "<svg/onload=alert(5)>",
    "{{7*7191}}",
    "{{ config.SECRET_KEY }}",
    "${7*7191}#{7*7191}<%= 7*7191 %>",
    '<iframe src="javascript:alert(9)"></iframe>',
    '<a href="javascript:alert(10)">x</a>',
    "</textarea></pre></code><script>alert(11)</script>",
    '" autofocus onfocus="alert(12)',
    "' autofocus onfocus='alert(13)",
    "<body onload=alert(14)>",
    '<div hx-get="/logout" hx-trigger="load" hx-on::load="alert(15)">x</div>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(16)>",
    "<details open ontoggle=alert(17)>",
    "&lt;script&gt;alert(18)&lt;/script&gt;",
]
SSTI_RESULT = str(7 * 7191)
PROCESSORS = ["tests.processors", "tests.security.xss_processors"]


def _chunks(limit: int = 255) -> list[str]:
    """The corpus joined into strings of at most ``limit`` characters (a created_by holds 255)."""
    chunks, current = [], ""
    for item in CORPUS:
        if current and len(current) + len(item) > limit:
            chunks.append(current)
            current = ""
        current += item
    return [*chunks, current]


CHUNKS = _chunks()
ALL_TEXT = "\n".join(CORPUS)


@dataclass
class Seeded:
    """Tasks whose every user-controlled field holds the corpus."""

    pending: list[int]
    cancelled: int
    failure: int
    success: int

    @property
    def all(self) -> list[int]:
        return [*self.pending, self.cancelled, self.failure, self.success]


def _corpus_payload(**extra: Any) -> dict[str, Any]:
    return {"items": CORPUS, "by_key": {item: item for item in CORPUS}, **extra}


def seed(app: Flask, logins: bool = True) -> Seeded:
    """Submit, fail, succeed and cancel tasks with the corpus everywhere; failed logins with it
    (through the login form, or, faster, straight into the audit log as the form would)."""
    with app.app_context():
        service = AsyncTaskService()
        pending = [service.submit_task("NOOP", _corpus_payload(), created_by=chunk, run_at=FAR_FUTURE,
                                       idempotency_key=chunk[:200]).id for chunk in CHUNKS]
        cancelled = service.submit_task("NOOP", _corpus_payload(), created_by=CHUNKS[-1], run_at=FAR_FUTURE).id
        service.cancel_task(cancelled, actor=CHUNKS[0])
        succeeded = service.submit_task(MARKUP_TASK_TYPE, _corpus_payload(), created_by=CHUNKS[1]).id
        [claimed] = service.claim_due_tasks("xss-worker", 1, [MARKUP_TASK_TYPE])
        service.finish_task(claimed, TaskResult.success({"echo": CORPUS}), worker_id="xss-worker")
    failure = failed_task(app, FAILING_TASK_TYPE, _corpus_payload(error=ALL_TEXT), error=ALL_TEXT,
                          traceback="Traceback (most recent call last):\nRuntimeError: " + ALL_TEXT,
                          created_by=CHUNKS[0])
    # Audit rows naming the corpus (an admin's typed names land there as actor and target). Failed
    # logins with it are not shown on /audit (issue 10 item 20: no typed name that is no user).
    with app.app_context():
        for item in CORPUS:
            AsyncTaskService().audit(item, "token.create", "token", item)
        db.session.commit()
    # Anyone can type a login name; failed logins land in the audit log an admin reads.
    if not logins:
        with app.app_context():
            for item in CORPUS:
                AsyncTaskService().audit(item, "login", "user", item, outcome="failed")
            db.session.commit()
        return Seeded(pending, cancelled, failure, succeeded)
    visitor = app.test_client()
    for number, item in enumerate(CORPUS):
        address = f"198.51.100.{number + 1}"
        token = csrf_from(visitor.get("/login", environ_base={"REMOTE_ADDR": address}).text)
        visitor.post("/login", data={"username": item, "password": "guess", "csrf_token": token},
                     environ_base={"REMOTE_ADDR": address})
    return Seeded(pending, cancelled, failure, succeeded)


# -- the HTML ---------------------------------------------------------------------------------


class PageScan(HTMLParser):
    """Everything in a page that could run code, plus its visible text and attribute values."""

    DANGEROUS_TAGS = {"iframe", "object", "embed", "base", "math", "mglyph", "frame", "frameset", "applet"}
    URL_ATTRIBUTES = {"href", "src", "action", "formaction", "hx-get", "hx-post", "hx-put", "hx-delete",
                      "hx-patch", "data", "poster", "xlink:href"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        described = f"<{tag} {' '.join(f'{k}={v!r}' for k, v in attrs)[:160]}>"
        if tag in self.DANGEROUS_TAGS:
            self.problems.append(f"dangerous tag {described}")
        if tag == "script":
            self._in_script = True
            source = dict(attrs).get("src") or ""
            if not source.startswith("/static/"):
                self.problems.append(f"script not from /static/: {described}")
        for name, value in attrs:
            value = value or ""
            self.text.append(value)
            if name.startswith("on") or name.startswith("hx-on") or name.startswith("data-hx-on"):
                self.problems.append(f"event handler attribute {name}: {described}")
            if name in self.URL_ATTRIBUTES and re.sub(r"[\s\x00-\x1f]", "", value).lower().startswith(
                    ("javascript:", "vbscript:", "data:text/html")):
                self.problems.append(f"script URL in {name}: {described}")
            if name == "hx-get" and value.startswith("/logout"):
                self.problems.append(f"injected htmx request: {described}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append(f"inline script: {data[:120]!r}")
        self.text.append(data)

    @property
    def visible(self) -> str:
        return "\n".join(self.text)


def assert_inert(response: TestResponse, where: str, secret: str) -> PageScan:
    """The page shows the corpus as text only; returns the scan for further checks."""
    html = response.get_data(as_text=True)
    if response.mimetype == "application/json":
        # JSON (API errors echo input) is never rendered as a page: the type and nosniff say so.
        assert response.headers.get("X-Content-Type-Options") == "nosniff", where
        return PageScan()
    assert response.mimetype == "text/html", (where, response.mimetype)
    for item in CORPUS:
        if set(item) & set("<>\"'&"):
            assert item not in html, f"{where}: unescaped {item!r}"
    assert SSTI_RESULT not in html, f"{where}: a template expression was evaluated"
    assert secret not in html, f"{where}: the SECRET_KEY leaked"
    scan = PageScan()
    scan.feed(html)
    scan.close()
    assert scan.problems == [], f"{where}: {scan.problems}"
    return scan


@pytest.mark.parametrize("bad_html", [
    "<p><script>alert(1)</script></p>",
    '<p><img src=x onerror=alert(2)></p>',
    '<input value="" autofocus onfocus="alert(12)">',
    '<a href=" JavaScript:alert(10)">x</a>',
    '<div hx-get="/logout" hx-trigger="load">x</div>',
    "<p>49 and 50337</p>",
    '<script src="https://cdn.example/x.js"></script>',
    "<iframe src=/></iframe>",
])
def test_the_checker_catches_live_markup(bad_html: str) -> None:
    """The check can fail: each of these pages must be refused by ``assert_inert``."""
    response = TestResponse([bad_html.encode()], "200 OK", [("Content-Type", "text/html; charset=utf-8")],
                            request=None)
    with pytest.raises(AssertionError):
        assert_inert(response, "self-test", "the-secret")


@pytest.fixture
def xss_app(make_app: Callable[..., Flask]) -> tuple[Flask, Seeded]:
    app = make_app(ASYNC_TASK_PROCESSORS=PROCESSORS, PROPAGATE_EXCEPTIONS=False)
    return app, seed(app)


def test_corpus_is_inert_in_every_page_and_fragment(xss_app: tuple[Flask, Seeded]) -> None:
    app, seeded = xss_app
    secret = app.config["SECRET_KEY"]
    admin, token = logged_in_client(app, "admin", "root")
    pages: dict[str, TestResponse] = {}

    def get(path: str, **headers: str) -> TestResponse:
        response = admin.get(path, headers=headers)
        assert response.status_code < 500, (path, response.status_code)
        pages[f"GET {path} {headers.get('HX-Target', '')}"] = response
        return response

    # Stored: every page and the fragments htmx polls.
    for path in ("/", "/tasks", "/audit", "/task-types", "/workers", "/admin/users", "/admin/tokens",
                 "/tasks/bulk?scope=matching", f"/tasks/bulk?scope=selected&ids={seeded.failure}"):
        get(path)
    for target in ("task-results", "task-rows"):
        get("/tasks", **{"HX-Request": "true", "HX-Target": target})
    get("/", **{"HX-Request": "true", "HX-Target": "overview-live"})
    for task_id in seeded.all:
        get(f"/tasks/{task_id}")
        for target in ("task-live", "task-notifications"):
            get(f"/tasks/{task_id}", **{"HX-Request": "true", "HX-Target": target})
    # Reflected: every filter, one corpus item at a time, as a page and as fragments.
    for item in CORPUS:
        every_filter = {name: item for name in ("task_type", "status", "priority_min", "priority_max",
                                                "created_by", "created_after", "created_before", "id",
                                                "limit", "cursor", "search")}
        get(f"/tasks?{urlencode(every_filter)}")
        get(f"/tasks?{urlencode({'created_by': item, 'task_type': item})}")
        get(f"/tasks?{urlencode({'created_by': item})}", **{"HX-Request": "true", "HX-Target": "task-results"})
        get(f"/tasks?{urlencode({'created_by': item})}", **{"HX-Request": "true", "HX-Target": "task-rows"})
        get(f"/audit?{urlencode({'actor': item, 'action': item})}")
        get(f"/audit?{urlencode({'cursor': item})}")
        get(f"/tasks/bulk?{urlencode({'scope': 'matching', 'created_by': item, 'task_type': item})}")
        get(f"/tasks/bulk?{urlencode({'scope': item})}")
        get(f"/tasks/bulk?{urlencode({'scope': 'selected', 'ids': item})}")
        # Form input shown back with its error, and errors naming the value.
        for path, form in (("/admin/users", {"username": item, "password": "long-enough", "role": item}),
                           ("/admin/tokens", {"name": item}),
                           (f"/admin/users/{quote(item, safe='')}/role", {"role": item}),
                           (f"/admin/tokens/{quote(item, safe='')}/revoke", {}),
                           (f"/task-types/{quote(item, safe='')}/pause", {})):
            response = admin.post(path, data={**form, "csrf_token": token})
            assert response.status_code < 500, (path, response.status_code)
            pages[f"POST {path} {sorted(form.items())}"] = response
        anonymous = app.test_client()
        login_page = anonymous.get(f"/login?{urlencode({'next': item})}")
        pages[f"GET /login?next={item}"] = login_page
        failed = anonymous.post("/login", data={"username": item, "password": "guess", "next": item,
                                                "csrf_token": csrf_from(login_page.text)},
                                environ_base={"REMOTE_ADDR": "192.0.2.77"})
        pages[f"POST /login {item}"] = failed
    # A flash message naming the markup task type (pause it, then follow to the page).
    paused = admin.post(f"/task-types/{quote(MARKUP_TASK_TYPE, safe='')}/pause", data={"csrf_token": token},
                        follow_redirects=True)
    assert paused.status_code == 200
    pages["pause flash"] = paused
    # API errors echo input as JSON only.
    bearer = {"Authorization": "Bearer nope"}
    pages["API 401"] = admin.get(f"/api/tasks?{urlencode({'status': CORPUS[0]})}", headers=bearer)

    scans = {where: assert_inert(response, where, secret) for where, response in pages.items()}

    # Not vacuous: the corpus is on the pages, shown as text.
    def shows(where: str, expected: list[str]) -> None:
        visible = scans[where].visible
        missing = [text for text in expected if text not in visible]
        assert missing == [], f"{where} does not show {missing}"

    shows("GET /tasks ", CHUNKS)
    shows(f"GET /tasks/{seeded.failure} ", CORPUS)  # error, traceback and creator
    shows(f"GET /tasks/{seeded.failure} ", [json.dumps(item)[1:-1] for item in CORPUS])  # payload JSON
    shows(f"GET /tasks/{seeded.success} ", [MARKUP_TASK_TYPE])
    shows("GET /task-types ", [MARKUP_TASK_TYPE])
    shows("GET /audit ", CORPUS)  # as actors and targets of audited actions
    shows("pause flash", [MARKUP_TASK_TYPE])
    for item in CORPUS:  # a filter value is kept in its input, as text
        shows(f"GET /tasks?{urlencode({'created_by': item})} task-results", [])
        shows(f"GET /tasks?{urlencode({'created_by': item, 'task_type': item})} ", [item])
        shows(f"GET /audit?{urlencode({'actor': item, 'action': item})} ", [item])
    assert len(pages) > 300


def test_a_javascript_url_is_never_accepted_as_a_link(make_app: Callable[..., Flask]) -> None:
    """notify_url is the one URL a submitter gives; a script URL is refused, not stored."""
    app = make_app()
    with app.app_context():
        service = AsyncTaskService()
        for url in ("javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<script>alert(1)</script>",
                    " javascript:alert(1)"):
            with pytest.raises(Exception) as refused:
                service.submit_task("NOOP", {}, notify_url=url)
            assert "notify_url" in str(refused.value), url


# -- Chromium -------------------------------------------------------------------------------------


@pytest.fixture
def live_xss_console(make_app: Callable[..., Flask]) -> Iterator[tuple[str, Seeded]]:
    """The seeded console on a real HTTP server (no consumer: the tasks stay as seeded)."""
    app = make_app(ASYNC_TASK_PROCESSORS=PROCESSORS)
    seeded = seed(app, logins=False)
    add_user(app, "root", "admin")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="xss-console", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seeded
    finally:
        server.shutdown()
        thread.join(timeout=10)


INJECTED_ELEMENTS = """() => {
    const found = [];
    for (const el of document.querySelectorAll('*')) {
        const tag = el.tagName.toLowerCase();
        if (['iframe', 'object', 'embed', 'math', 'base'].includes(tag)) found.push(el.outerHTML.slice(0, 120));
        if (tag === 'script' && !(el.getAttribute('src') || '').startsWith('/static/')) found.push(el.outerHTML.slice(0, 120));
        for (const attr of el.attributes) {
            const name = attr.name.toLowerCase();
            if (name.startsWith('on') || name.startsWith('hx-on')) found.push(el.outerHTML.slice(0, 120));
            if ((name === 'href' || name === 'src') && attr.value.trim().toLowerCase().startsWith('javascript:'))
                found.push(el.outerHTML.slice(0, 120));
        }
    }
    return found;
}"""
COUNT_SWAPS = "document.addEventListener('htmx:afterSettle', () => { window.__settled = (window.__settled || 0) + 1; });"


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_corpus_fires_nothing_in_chromium_even_without_the_csp(browser: Any,
                                                               live_xss_console: tuple[str, Seeded]) -> None:
    url, seeded = live_xss_console
    dialogs: list[str] = []

    def new_page(bypass_csp: bool) -> Any:
        context = browser.new_context(base_url=url, bypass_csp=bypass_csp, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        context.add_init_script(COUNT_SWAPS)
        page = context.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(f"{dialog.type}: {dialog.message}"), dialog.dismiss()))
        return page

    # The detector works: markup injected by script does fire once the CSP is off...
    page = new_page(bypass_csp=True)
    inject = "() => { const d = document.createElement('div'); d.innerHTML = '<img src=x onerror=alert(\"probe\")>'; document.body.appendChild(d); }"
    page.goto("/login")
    page.evaluate(inject)
    page.wait_for_function("() => true")  # let the event loop run the error handler
    page.wait_for_timeout(300)
    assert dialogs == ["alert: probe"]
    dialogs.clear()
    # ... and the console's CSP alone would already have stopped it.
    guarded = new_page(bypass_csp=False)
    guarded.goto("/login")
    guarded.evaluate(inject)
    guarded.wait_for_timeout(500)
    assert dialogs == []
    guarded.context.close()

    page.fill("input[name=username]", "root")
    page.fill("input[name=password]", PASSWORD)
    page.press("input[name=password]", "Enter")
    page.wait_for_url(re.compile(r"/$"))
    live_pages = ["/tasks", f"/tasks/{seeded.pending[0]}", f"/tasks?{urlencode({'created_by': CHUNKS[0]})}"]
    still_pages = ["/", "/audit", "/task-types", f"/tasks/{seeded.failure}", f"/tasks/{seeded.success}",
                   f"/tasks/{seeded.cancelled}", f"/tasks/bulk?{urlencode({'scope': 'matching', 'created_by': CHUNKS[1]})}",
                   f"/tasks?{urlencode({name: CORPUS[1] for name in ('task_type', 'status', 'created_by', 'id')})}",
                   f"/audit?{urlencode({'actor': CORPUS[0], 'action': CORPUS[2]})}"]
    injected: dict[str, list[str]] = {}
    for path in live_pages + still_pages:
        page.goto(path)
        if path in live_pages:  # wait until htmx has swapped fresh server HTML in at least once
            page.wait_for_function("() => (window.__settled || 0) >= 1", timeout=10_000)
        found = page.evaluate(INJECTED_ELEMENTS)
        if found:
            injected[path] = found
    # Typed into a form and shown back with its error.
    page.goto("/admin/tokens")
    page.fill("input[name=name]", CORPUS[1])
    page.press("input[name=name]", "Enter")
    page.wait_for_load_state()
    if found := page.evaluate(INJECTED_ELEMENTS):
        injected["/admin/tokens form"] = found
    page.wait_for_timeout(300)
    page.context.close()
    assert injected == {}
    assert dialogs == []
