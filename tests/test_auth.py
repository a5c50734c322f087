"""Console login, roles, CSRF, cookies, security headers and the ``flask users`` commands."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from tests.console_support import PASSWORD, add_user, csrf_from, htmx, logged_in_client, login
from webapp.accounts.models import User
from webapp.accounts.throttle import LoginPolicy, LoginThrottle
from webapp.accounts.users import authenticate
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AuditEntry

CONSOLE_PAGES = ["/", "/tasks", "/tasks?status=PENDING", "/tasks/1", "/workers", "/task-types", "/audit",
                 "/tasks/bulk?scope=matching", "/admin/users", "/admin/tokens"]


def audit_rows(app: Flask, action: str) -> list[AuditEntry]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)
                                       .order_by(AuditEntry.id)))


@pytest.mark.parametrize("path", CONSOLE_PAGES)
def test_anonymous_request_to_any_console_page_redirects_to_login(make_app: Callable[..., Flask],
                                                                  path: str) -> None:
    app = make_app()
    response = app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_anonymous_htmx_request_is_sent_to_login_by_header(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    response = app.test_client().get("/tasks", headers=htmx("task-rows", **{
        "HX-Current-URL": "http://localhost/tasks?status=PENDING"}))
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login?next=/tasks?status%3DPENDING"


def test_login_and_logout(app: Flask) -> None:
    add_user(app, "olga", "operator")
    client = app.test_client()
    page = client.get("/login?next=/tasks")
    assert page.status_code == 200
    assert 'name="username"' in page.text and 'name="password"' in page.text
    response = client.post("/login", data={"username": "olga", "password": PASSWORD, "next": "/tasks",
                                           "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302 and response.headers["Location"] == "/tasks"
    overview = client.get("/")
    assert overview.status_code == 200 and "olga" in overview.text

    logins = audit_rows(app, "login")
    assert [(e.actor, e.outcome, e.target_id) for e in logins] == [("olga", "ok", "olga")]
    with app.app_context():
        assert db.session.scalars(select(User).where(User.username == "olga")).one().last_login_at is not None

    assert client.get("/logout").status_code == 405  # no state change on GET
    assert client.post("/logout").status_code == 400  # no CSRF token
    assert client.get("/").status_code == 200
    response = client.post("/logout", data={"csrf_token": csrf_from(overview.text)})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/").status_code == 302
    assert [e.actor for e in audit_rows(app, "logout")] == ["olga"]


def test_wrong_password_is_refused_and_audited(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    add_user(app, "olga", "operator")
    client = app.test_client()
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": "olga", "password": "wrong password",
                                           "csrf_token": token})
    assert response.status_code == 401
    assert "Invalid username or password" in response.text
    assert 'value="olga"' in response.text  # what was typed is kept (not the password)
    assert client.get("/").status_code == 302
    unknown = client.post("/login", data={"username": "nobody", "password": "x" * 10, "csrf_token": token})
    assert unknown.status_code == 401
    # A name that is no user is not kept (it may be a password typed into the wrong box).
    assert [(e.target_id, e.outcome) for e in audit_rows(app, "login")] == [("olga", "failed"),
                                                                           (None, "failed")]


def test_repeated_failed_logins_are_slowed_down(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    add_user(app, "olga", "operator")
    client = app.test_client()
    token = csrf_from(client.get("/login").text)
    for _ in range(LoginPolicy().free_failures):
        bad = client.post("/login", data={"username": "olga", "password": "guess", "csrf_token": token})
        assert bad.status_code == 401
    # Even the right password must wait now, or the slow-down would mean nothing.
    blocked = client.post("/login", data={"username": "olga", "password": PASSWORD, "csrf_token": token})
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    assert "Too many failed logins" in blocked.text
    assert audit_rows(app, "login")[-1].outcome == "throttled"
    # Another user is not affected by olga's failures.
    add_user(app, "ivan", "viewer")
    assert client.post("/login", data={"username": "ivan", "password": PASSWORD,
                                       "csrf_token": token}).status_code == 302


def test_throttle_waits_grow_and_count_per_address(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    throttle = LoginThrottle(LoginPolicy(free_failures=2, base_delay=10, per_address_failures=4))
    with app.app_context():
        session = db.session()
        for _ in range(2):
            throttle.record_failure(session, "x", "10.0.0.9")
        db.session.commit()
        first = throttle.wait_seconds(session, "x", "10.0.0.9")
        throttle.record_failure(session, "x", "10.0.0.9")
        db.session.commit()
        second = throttle.wait_seconds(session, "x", "10.0.0.9")
        assert 8 < first <= 10 and 18 < second <= 20
        assert throttle.wait_seconds(session, "x", "10.0.0.8") == 0  # the user from elsewhere: not held back
        assert throttle.wait_seconds(session, "someone-else", "10.0.0.1") == 0
        for _ in range(4):
            throttle.record_failure(session, "another", "10.0.0.1")
        db.session.commit()
        assert throttle.wait_seconds(session, "someone-else", "10.0.0.1") > 0
        assert throttle.wait_seconds(session, "someone-else", "10.0.0.2") == 0


def test_next_parameter_cannot_leave_the_site(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    add_user(app, "olga", "viewer")
    client = app.test_client()
    token = csrf_from(client.get("/login").text)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        response = client.post("/login", data={"username": "olga", "password": PASSWORD, "next": target,
                                               "csrf_token": token})
        assert response.headers["Location"] == "/", target
        client.post("/logout", data={"csrf_token": csrf_from(client.get("/").text)})
        token = csrf_from(client.get("/login").text)


def test_login_form_without_csrf_token_is_refused(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    add_user(app, "olga", "viewer")
    response = app.test_client().post("/login", data={"username": "olga", "password": PASSWORD})
    assert response.status_code == 400
    assert audit_rows(app, "login") == []


def test_session_cookie_flags(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    add_user(app, "olga", "viewer")
    client = app.test_client()
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": "olga", "password": PASSWORD, "csrf_token": token})
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # testing: the test client speaks plain HTTP

    production = make_app(TESTING=False, SECRET_KEY=secrets.token_hex(32))  # outside testing a weak key stops start-up
    assert production.config["SESSION_COOKIE_SECURE"] is True
    assert production.config["SESSION_COOKIE_HTTPONLY"] is True
    assert production.config["SESSION_COOKIE_SAMESITE"] == "Lax"


def test_disabled_user_is_logged_out(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client, _ = logged_in_client(app, "viewer", "vera")
    assert client.get("/").status_code == 200
    with app.app_context():
        from webapp.accounts.users import set_user_active

        set_user_active("vera", False, actor="test")
    assert client.get("/").status_code == 302
    with app.app_context():
        assert authenticate("vera", PASSWORD) is None


def test_viewer_cannot_cancel_retry_or_bulk(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}, run_at="2999-01-01T00:00:00Z").id
    client, token = logged_in_client(app, "viewer")
    detail = client.get(f"/tasks/{task_id}")
    assert detail.status_code == 200 and "cancel-button" not in detail.text
    assert 'name="ids"' not in client.get("/tasks").text  # no selection boxes for viewers
    for path in (f"/tasks/{task_id}/cancel", f"/tasks/{task_id}/retry"):
        assert client.post(path, data={"csrf_token": token}).status_code == 403
    assert client.post("/tasks/bulk", data={"csrf_token": token, "action": "cancel", "scope": "selected",
                                            "ids": str(task_id)}).status_code == 403
    assert client.get(f"/tasks/bulk?scope=selected&ids={task_id}").status_code == 403
    with app.app_context():
        assert AsyncTaskService().require_task(task_id).status == "PENDING"


def test_post_without_csrf_token_is_refused(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}, run_at="2999-01-01T00:00:00Z").id
    client, token = logged_in_client(app, "operator")
    refused = client.post(f"/tasks/{task_id}/cancel")
    assert refused.status_code == 400
    assert "security token" in refused.text
    htmx_refused = client.post(f"/tasks/{task_id}/cancel", headers=htmx("task-live", **{"X-CSRFToken": "forged"}))
    assert htmx_refused.status_code == 400
    assert htmx_refused.headers["HX-Retarget"] == "#messages"
    assert "<html" not in htmx_refused.text
    with app.app_context():
        assert AsyncTaskService().require_task(task_id).status == "PENDING"
    # The same request with the token as htmx sends it (header) goes through.
    accepted = client.post(f"/tasks/{task_id}/cancel", headers=htmx("task-live", **{"X-CSRFToken": token}))
    assert accepted.status_code == 200
    with app.app_context():
        assert AsyncTaskService().require_task(task_id).status == "CANCELLED"


def test_admin_pages_need_the_admin_role(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    operator, _ = logged_in_client(app, "operator")
    assert operator.get("/admin/users").status_code == 403
    assert operator.get("/admin/tokens").status_code == 403
    assert "/admin/users" not in operator.get("/").text
    admin, token = logged_in_client(app, "admin")
    page = admin.get("/admin/users")
    assert page.status_code == 200 and "operator-user" in page.text


def test_admin_creates_users_and_tokens(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    admin, token = logged_in_client(app, "admin", "root")
    bad = admin.post("/admin/users", data={"csrf_token": token, "username": "new user!", "role": "viewer",
                                           "password": "long enough now"})
    assert bad.status_code == 422 and "username must be" in bad.text and "new user!" in bad.text
    created = admin.post("/admin/users", data={"csrf_token": token, "username": "nina", "role": "operator",
                                               "password": "long enough now"})
    assert created.status_code == 303
    nina = app.test_client()
    login(nina, "nina", "long enough now")
    assert admin.post("/admin/users/nina/role", data={"csrf_token": token, "role": "viewer"}).status_code == 303
    assert admin.post("/admin/users/root/active", data={"csrf_token": token, "active": "0"}).status_code == 409

    made = admin.post("/admin/tokens", data={"csrf_token": token, "name": "billing"})
    assert made.status_code == 201
    assert 'id="new-token"' in made.text and made.headers["Cache-Control"] == "no-store"
    assert "id=\"new-token\"" not in admin.get("/admin/tokens").text  # shown once only
    assert admin.post("/admin/tokens/billing/revoke", data={"csrf_token": token}).status_code == 303
    actions = [e.action for e in audit_rows(app, "user.create")] + [e.action for e in audit_rows(app, "token.create")]
    assert actions == ["user.create", "user.create", "token.create"]


@pytest.mark.parametrize("path", ["/login", "/", "/tasks", "/static/console.css", "/healthz"])
def test_security_headers_on_every_response(make_app: Callable[..., Flask], path: str) -> None:
    app = make_app()
    client, _ = logged_in_client(app, "viewer")
    response = client.get(path)
    assert response.status_code in (200, 302)  # a logged-in user is sent on from /login
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_pages_have_no_inline_script_or_style(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client, _ = logged_in_client(app, "admin")
    for path in ("/", "/tasks", "/workers", "/task-types", "/audit", "/admin/users", "/admin/tokens", "/login"):
        html = client.get(path).text
        assert "<script>" not in html and "<style" not in html and " style=" not in html, path
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", html), path  # no inline event handlers


# -- flask users ------------------------------------------------------------------------------


def test_users_create_command(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create", "carol", "--role", "operator", "--password", "s3cret-passphrase"])
    assert result.exit_code == 0, result.output
    assert "created user carol (operator)" in result.output
    with app.app_context():
        user = authenticate("carol", "s3cret-passphrase")
        assert user is not None and user.role == "operator"
        assert user.password_hash != "s3cret-passphrase"
    duplicate = runner.invoke(args=["users", "create", "carol", "--password", "another-passphrase"])
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    short = runner.invoke(args=["users", "create", "dave", "--password", "short"])
    assert short.exit_code == 1 and "at least 12" in short.output
    bad_role = runner.invoke(args=["users", "create", "erin", "--role", "root", "--password", "long-enough-pw"])
    assert bad_role.exit_code == 2


def test_users_create_prompts_for_a_hidden_confirmed_password(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    runner = app.test_cli_runner()
    mismatch = runner.invoke(args=["users", "create", "frank"], input="first-passphrase\nother-passphrase\nfirst-passphrase\nfirst-passphrase\n")
    assert mismatch.exit_code == 0, mismatch.output
    assert "first-passphrase" not in mismatch.output  # hidden input
    with app.app_context():
        assert authenticate("frank", "first-passphrase") is not None


def test_ensure_demo_creates_an_admin_once(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    runner = app.test_cli_runner()
    first = runner.invoke(args=["users", "ensure-demo"])
    assert first.exit_code == 0
    assert "username: admin" in first.output
    password = first.output.split("password: ", 1)[1].split()[0]
    with app.app_context():
        user = authenticate("admin", password)
        assert user is not None and user.role == "admin"
    again = runner.invoke(args=["users", "ensure-demo"])
    assert again.exit_code == 0 and again.output == ""
