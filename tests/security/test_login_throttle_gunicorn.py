"""Issue 10 item 9: the per-address login limit holds across gunicorn worker processes.

Before the fix each worker counted failures in its own memory: with 5 workers 152 attempts got
through before the first 429, instead of 30. Here real gunicorn (2 workers, a fresh connection
per request, so the kernel spreads them over both) on PostgreSQL answers exactly 30 failures
from one address and then 429 to every further attempt, whichever worker takes it.
"""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.smtp_server import free_port
from tests.test_gunicorn import Services, pg_app, process_environment, services, wait_ready  # noqa: F401
from webapp.accounts.throttle import LoginPolicy
from webapp.extensions import db
from webapp.tasks.models import AuditEntry

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def login_attempt(base: str, username: str, password: str) -> int:
    """One browser's login: GET the form (session cookie, CSRF token), POST it; new connections each."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    headers = {"Connection": "close"}
    with opener.open(urllib.request.Request(f"{base}/login", headers=headers), timeout=10) as page:
        match = CSRF_INPUT.search(page.read().decode())
    assert match, "the login page has no CSRF token"
    body = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": match.group(1)})
    request = urllib.request.Request(f"{base}/login", data=body.encode(), method="POST", headers=headers)
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_login_throttle_is_shared_by_gunicorn_workers(pg_url: str, pg_app, services: Services,  # noqa: F811
                                                      tmp_path: Path) -> None:
    services.env = process_environment(pg_url, tmp_path, None, ASYNC_TASK_CONSUMER_ENABLED="false",
                                       SESSION_COOKIE_SECURE="false")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = services.gunicorn(port, workers=2)
    wait_ready(base, server)
    assert len(server.children()) == 2
    limit = LoginPolicy().per_address_failures
    statuses = [login_attempt(base, f"sprayed-{n}", "Winter2026!") for n in range(limit + 12)]
    assert statuses == [401] * limit + [429] * 12
    with pg_app.app_context():
        throttled = list(db.session.scalars(select(AuditEntry).where(AuditEntry.outcome == "throttled")))
        assert [(row.target_id, row.detail["count"]) for row in throttled] == [("127.0.0.1", 12)]
        db.session.remove()
