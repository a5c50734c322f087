"""Every route walked from ``app.url_map``: who may call it, CSRF, no change on GET, revoked tokens.

Each walk also checks the security headers of every answer and that a refused request left
every table exactly as it was (tasks, events, audit log, users, tokens, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask

from tests.console_support import csrf_from, logged_in_client
from tests.security.support import (
    FORMS,
    HTMX_TARGETS,
    NOT_ROLE_GATED,
    Probe,
    World,
    assert_security_headers,
    build_world,
    changed_tables,
    new_audit_actions,
    probes,
    server_errors,
    snapshot,
)
from webapp.accounts.tokens import revoke_token
from webapp.tasks import AsyncTaskService

HTMX = {"HX-Request": "true", "HX-Target": "task-rows", "HX-Current-URL": "http://localhost/tasks"}


@pytest.fixture
def world(make_app: Callable[..., Flask]) -> World:
    """A populated SQLite app whose 500s come back as answers (so a walk can report them)."""
    return build_world(make_app(PROPAGATE_EXCEPTIONS=False))


def test_the_walk_sees_every_route(world: World) -> None:
    """The walk is built from the URL map, so it covers the console, the API and the health routes."""
    walked = {probe.endpoint for probe in probes(world.app, world)}
    every = {rule.endpoint for rule in world.app.url_map.iter_rules()}
    assert walked == every
    assert {"console.cancel_task", "admin.revoke_token", "api.submit_task", "health.metrics"} <= walked


def test_anonymous_is_sent_to_login_or_gets_401(world: World) -> None:
    """Console: redirect to /login (htmx: 401 + HX-Redirect). API: 401. Public routes stay open."""
    before = snapshot(world.app)
    problems: list[str] = []
    with server_errors(world.app) as errors:
        for probe in probes(world.app, world):
            for htmx in (False, True):
                # A fresh visitor each time (a POST to /logout would end the session), holding a
                # valid CSRF token so that a POST reaches the login check rather than CSRF's.
                client = world.app.test_client()
                token = csrf_from(client.get("/login").text)
                form = None
                if probe.method != "GET":
                    form = {**FORMS.get(probe.endpoint, {}), "csrf_token": token}
                    if probe.endpoint == "auth.login":
                        form.update(username=world.target_user, password="not the password")
                headers = {**HTMX, "X-CSRFToken": token} if htmx else {}
                response = client.open(probe.path, method=probe.method, data=form, headers=headers)
                what = f"{probe}{' [htmx]' if htmx else ''}"
                assert_security_headers(response, what)
                status, location = response.status_code, response.headers.get("Location", "")
                redirect_to = location + response.headers.get("HX-Redirect", "")
                if probe.is_public:
                    if "/login" in redirect_to and probe.endpoint != "auth.login":
                        problems.append(f"{what}: public route sent to login")
                    if probe.endpoint == "auth.login" and probe.method == "POST" and status != 401:
                        problems.append(f"{what}: a wrong password got {status}")
                    continue
                if probe.area == "api":
                    body = response.get_json(silent=True) or {}
                    if status != 401 or "Bearer" not in response.headers.get("WWW-Authenticate", "") \
                            or body.get("error", {}).get("code") != "unauthorized":
                        problems.append(f"{what}: {status} {response.get_data(as_text=True)[:120]}")
                elif htmx and status == 401:
                    if not response.headers.get("HX-Redirect", "").startswith("/login"):
                        problems.append(f"{what}: 401 without HX-Redirect to /login")
                elif status not in (302, 303) or not location.startswith("/login"):
                    problems.append(f"{what}: {status} Location={location!r}")
    assert errors == [], errors
    assert problems == [], "\n".join(problems)
    # The one anonymous POST that may write is the login itself (its audit entry and its failure
    # counters, issue 10 items 7-9); nothing else.
    after = snapshot(world.app)
    assert [t for t in changed_tables(before, after) if t not in ("audit_log", "login_failure_counter")] == []
    assert new_audit_actions(world.app, before) <= {"login", "logout"}


@pytest.mark.parametrize("configured", [False, True])
def test_metrics_need_the_token_unless_opened_explicitly(make_app: Callable[..., Flask],
                                                         configured: bool) -> None:
    """/metrics is closed by default (issue 10 item 5), bearer-protected when a token is configured,
    and open only when ASYNC_TASK_METRICS_PUBLIC says so."""
    secret = "metrics-secret-123"
    app = make_app(**({"ASYNC_TASK_METRICS_TOKEN": secret} if configured else {}))
    world = build_world(app)
    client = app.test_client()
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert make_app(ASYNC_TASK_METRICS_PUBLIC=True).test_client().get("/metrics").status_code == 200
    assert_security_headers(anonymous, "/metrics")
    if configured:
        # Another secret of this app (an API token) is not the metrics token.
        assert client.get("/metrics", headers={"Authorization": f"Bearer {world.token}"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {secret}x"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_viewer_cannot_change_anything(world: World) -> None:
    """Every non-GET route as a logged-in viewer: console 403, API 401 (a session is no token)."""
    client, token = logged_in_client(world.app, "viewer", "vera")
    before = snapshot(world.app)
    problems: list[str] = []
    walked = 0
    with server_errors(world.app) as errors:
        for probe in probes(world.app, world):
            if probe.method == "GET" or probe.endpoint in NOT_ROLE_GATED or probe.area in ("static", "health"):
                continue
            walked += 1
            form = {**FORMS.get(probe.endpoint, {}), "csrf_token": token}
            for htmx in (False, True):
                headers = {**HTMX, "X-CSRFToken": token} if htmx else {}
                response = client.open(probe.path, method=probe.method, data=form, headers=headers)
                assert_security_headers(response, probe)
                expected = 401 if probe.area == "api" else 403
                if response.status_code != expected:
                    problems.append(f"{probe}{' [htmx]' if htmx else ''}: {response.status_code}, expected {expected}")
    assert errors == [], errors
    assert problems == [], "\n".join(problems)
    assert walked >= 15  # cancel, retry, bulk, pause/resume, users, tokens, every API write
    assert changed_tables(before, snapshot(world.app)) == []
    assert client.get("/").status_code == 200  # still logged in: refused, not thrown out


def test_state_changing_console_requests_need_the_csrf_token(world: World) -> None:
    """Every non-GET console route, as an admin: no token, a forged one or another session's: 400."""
    admin, _ = logged_in_client(world.app, "admin", "root")
    other, other_token = logged_in_client(world.app, "admin", "other-admin")
    before = snapshot(world.app)
    variants = {
        "no token": ({}, {}),
        "forged token": ({"csrf_token": "forged"}, {"X-CSRFToken": "forged"}),
        "another session's token": ({"csrf_token": other_token}, {}),
        "htmx, another session's token": ({}, {**HTMX, "X-CSRFToken": other_token}),
    }
    problems: list[str] = []
    walked = 0
    with server_errors(world.app) as errors:
        for probe in probes(world.app, world):
            # The API is CSRF-exempt by design: it takes no cookies, only bearer tokens (viewer test).
            if probe.method == "GET" or probe.area in ("api", "static", "health"):
                continue
            walked += 1
            for name, (extra_form, headers) in variants.items():
                form = {**FORMS.get(probe.endpoint, {}), **extra_form}
                response = admin.open(probe.path, method=probe.method, data=form, headers=headers)
                assert_security_headers(response, probe)
                if response.status_code not in (400, 403):
                    problems.append(f"{probe} with {name}: {response.status_code}")
    assert errors == [], errors
    assert problems == [], "\n".join(problems)
    assert walked >= 12
    assert changed_tables(before, snapshot(world.app)) == []
    assert admin.get("/").status_code == 200 and other.get("/").status_code == 200


CONTROLS = {
    # endpoint -> (path template, table that must change)
    "console.cancel_task": ("/tasks/{pending}/cancel", "async_task"),
    "console.retry_task": ("/tasks/{failure}/retry", "async_task"),
    "console.bulk_apply": ("/tasks/bulk", "async_task"),
    "console.pause_or_resume_task_type": ("/task-types/NOOP/pause", "task_type_state"),
    "admin.create_user_view": ("/admin/users", "console_user"),
    "admin.change_role": ("/admin/users/{user}/role", "console_user"),
    "admin.change_active": ("/admin/users/{user}/active", "console_user"),
    "admin.create_token": ("/admin/tokens", "api_token"),
    "admin.revoke_token": ("/admin/tokens/{token}/revoke", "api_token"),
}


@pytest.mark.parametrize("endpoint", sorted(CONTROLS))
def test_control_the_refused_requests_work_with_the_token_and_role(world: World, endpoint: str) -> None:
    """Control for the walks: the same request, from an admin with the CSRF token, does change data.

    So a 403 or 400 in the walks above is the guard's doing, not a request that would have
    failed anyway.
    """
    template, table = CONTROLS[endpoint]
    path = template.format(pending=world.pending_id, failure=world.failure_id, user=world.target_user,
                           token=world.token_name)
    admin, token = logged_in_client(world.app, "admin", "root")
    before = snapshot(world.app)
    response = admin.post(path, data={**FORMS.get(endpoint, {}), "csrf_token": token})
    assert response.status_code < 400, response.get_data(as_text=True)[:500]
    assert table in changed_tables(before, snapshot(world.app))


def test_get_changes_nothing(world: World) -> None:
    """Every GET route as an admin (plain, htmx, with action-like parameters): no table changes."""
    admin, _ = logged_in_client(world.app, "admin", "root")
    bearer = {"Authorization": f"Bearer {world.token}"}
    assert admin.get("/api/tasks", headers=bearer).status_code == 200  # last_used_at stamped now, once
    before = snapshot(world.app)
    sneaky = (f"?action=cancel&scope=matching&ids={world.pending_id}&confirm=1&active=0&role=admin"
              f"&name=mallory&username=mallory&password=mallory-password")
    statuses: dict[str, int] = {}
    with server_errors(world.app) as errors:
        for probe in probes(world.app, world):
            if probe.method != "GET" or _is_export(probe):
                continue
            headers_list = [{}, *({"HX-Request": "true", "HX-Target": target} for target in HTMX_TARGETS)]
            for query in ("", sneaky):
                for headers in headers_list:
                    response = admin.get(probe.path + query, headers={**headers, **bearer})
                    assert_security_headers(response, probe)
                    statuses[f"{probe}{query[:1]}"] = response.status_code
    assert errors == [], errors
    # /readyz is 503 here on purpose: the test config names an SMTP server that does not answer.
    assert {what: status for what, status in statuses.items()
            if status >= 500 and "health.readyz" not in what} == {}
    assert changed_tables(before, snapshot(world.app)) == []
    with world.app.app_context():
        assert AsyncTaskService().require_task(world.pending_id).status == "PENDING"


def test_export_gets_write_only_their_audit_entry(world: World) -> None:
    """A download is audited (issue 16): the audit row is the only change an export GET makes."""
    admin, _ = logged_in_client(world.app, "admin", "root")
    bearer = {"Authorization": f"Bearer {world.token}"}
    assert admin.get("/api/tasks", headers=bearer).status_code == 200  # last_used_at stamped now, once
    exports = [probe for probe in probes(world.app, world) if probe.method == "GET" and _is_export(probe)]
    assert exports, "no export routes found"
    for probe in exports:
        before = snapshot(world.app)
        response = admin.get(probe.path, headers=bearer)
        assert response.status_code == 200, (probe, response.status_code)
        response.get_data()  # a streamed answer writes its audit row before the first row
        assert changed_tables(before, snapshot(world.app)) == ["audit_log"], probe
        assert {action.split(".")[0] for action in new_audit_actions(world.app, before)} == {"export"}, probe


def _is_export(probe: Probe) -> bool:
    return "export" in probe.endpoint


def test_revoked_token_is_refused_everywhere(world: World) -> None:
    """A token revoked (here from the admin page) is refused by every API call at once."""
    client = world.app.test_client()
    bearer = {"Authorization": f"Bearer {world.token}"}
    assert client.get("/api/tasks", headers=bearer).status_code == 200
    admin, token = logged_in_client(world.app, "admin", "root")
    assert admin.post(f"/admin/tokens/{world.token_name}/revoke", data={"csrf_token": token}).status_code == 303
    before = snapshot(world.app)
    walked = 0
    for probe in probes(world.app, world):
        if probe.area != "api" or probe.is_public:
            continue
        walked += 1
        response = client.open(probe.path, method=probe.method, headers=bearer,
                               json={"task_type": "NOOP", "payload": {}} if probe.method == "POST" else None)
        assert response.status_code == 401, probe
        assert response.get_json()["error"]["code"] == "invalid_token", probe
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], probe
    assert walked >= 7
    assert changed_tables(before, snapshot(world.app)) == []


def test_token_revoked_while_in_use_stops_at_the_next_request(world: World) -> None:
    """Revocation through the accounts module (as ``flask tokens revoke`` does) is immediate."""
    client = world.app.test_client()
    bearer = {"Authorization": f"Bearer {world.token}"}
    assert client.post("/api/tasks", headers=bearer, json={"task_type": "NOOP", "payload": {}}).status_code == 202
    with world.app.app_context():
        revoke_token(world.token_name, actor="security-test")
    refused = client.post("/api/tasks", headers=bearer, json={"task_type": "NOOP", "payload": {}})
    assert refused.status_code == 401
    # A near miss of a valid token (one character changed) is no better.
    forged = world.token[:-1] + ("A" if world.token[-1] != "A" else "B")
    assert client.get("/api/tasks", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


OFF_SITE = ("//evil.example/", "https://evil.example/", "/\\evil.example", "\\\\evil.example/",
            "javascript:alert(1)", "http:evil.example", "/%2F%2Fevil.example")


def _is_local(location: str) -> bool:
    """A path on this site as a browser resolves it (no scheme, no host, no ``//`` or ``/\\``)."""
    parts = urlsplit(location)
    return (not parts.scheme and not parts.netloc and location.startswith("/")
            and not location.startswith(("//", "/\\")))


def test_no_redirect_leaves_the_site(world: World) -> None:
    """Every redirect target taken from the request (login, language switch, htmx) stays local."""
    for target in OFF_SITE:
        client = world.app.test_client()
        token = csrf_from(client.get("/login").text)
        language = client.post("/language", data={"lang": "en", "next": target, "csrf_token": token})
        assert language.status_code == 303 and _is_local(language.headers["Location"]), target
        login = client.post("/login", data={"username": world.target_user, "password": "correct horse battery",
                                            "next": target, "csrf_token": token})
        assert login.status_code == 302 and _is_local(login.headers["Location"]), (target, login.headers)
        anonymous = world.app.test_client().get("/tasks", headers={
            "HX-Request": "true", "HX-Current-URL": f"http://localhost/{target.lstrip('/')}"})
        hx_redirect = anonymous.headers["HX-Redirect"]
        assert hx_redirect.startswith("/login?"), target
        next_values = parse_qs(urlsplit(hx_redirect).query).get("next", ["/"])
        assert all(_is_local(value) for value in next_values), (target, hx_redirect)
