"""Issue 10 item 3: password policy, changing one's own password, admin reset, session lifetimes.

Before the fix an admin could create an admin with ``aaaaaaaa``, nobody could change their own
password, and a session lasted 12 hours however long it sat unused (a polling page kept
nothing alive because nothing was checked).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

import webapp.console.sessions as console_sessions
from tests.console_support import PASSWORD, add_user, csrf_from, htmx, logged_in_client, login
from webapp.accounts.passwords import is_common_password, validate_password
from webapp.accounts.users import authenticate, create_user
from webapp.extensions import db
from webapp.tasks.errors import ValidationError
from webapp.tasks.models import AuditEntry

NEW_PASSWORD = "plum orbit lantern 42"


def audit_actions(app: Flask) -> list[tuple[str | None, str, str | None]]:
    with app.app_context():
        return [(e.actor, e.action, e.target_id) for e in db.session.scalars(select(AuditEntry).order_by(AuditEntry.id))]


@pytest.mark.parametrize("password, problem", [
    ("aaaaaaaa", "at least 12"),
    ("short-pass1", "at least 12"),
    ("password1234", "too common"),
    ("qwertyuiop123", "too common"),
    ("Baseball2026!!", "too common"),  # a listed word with a digit/symbol suffix
    ("sunshine!!!!2026", "too common"),
    ("olga-the-admin", "must not be the username"),
])
def test_weak_passwords_are_refused_with_the_field_named(password: str, problem: str) -> None:
    with pytest.raises(ValidationError) as refused:
        validate_password(password, "olga-the-admin")
    assert refused.value.field == "password" and problem in refused.value.message


def test_the_common_list_ships_with_the_package_and_good_passwords_pass() -> None:
    assert is_common_password("PASSWORD") and is_common_password("iloveyou")
    assert validate_password(PASSWORD) == PASSWORD
    assert validate_password(NEW_PASSWORD, "olga") == NEW_PASSWORD


def test_admin_cannot_create_an_admin_with_a_weak_password(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    admin, token = logged_in_client(app, "admin", "root")
    for weak in ("aaaaaaaa", "password1234"):
        refused = admin.post("/admin/users", data={"csrf_token": token, "username": "eve", "role": "admin",
                                                   "password": weak})
        assert refused.status_code == 422, weak
        assert 'value="eve"' in refused.text and weak not in refused.text  # what was typed, not the password
    with app.app_context():
        assert authenticate("eve", "aaaaaaaa") is None
        with pytest.raises(ValidationError):
            create_user("eve", "aaaaaaaa", "admin")
    cli = app.test_cli_runner().invoke(args=["users", "create", "eve", "--role", "admin", "--password", "aaaaaaaa"])
    assert cli.exit_code == 1 and "at least 12" in cli.output


def test_every_user_changes_their_own_password(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    viewer, token = logged_in_client(app, "viewer", "vera")
    elsewhere = app.test_client()
    login(elsewhere, "vera")
    page = viewer.get("/account/password")
    assert page.status_code == 200 and 'name="current_password"' in page.text
    assert 'href="/account/password"' in viewer.get("/").text  # reachable from every page

    def change(current: str, new: str, again: str | None = None) -> tuple[int, str]:
        answer = viewer.post("/account/password", data={"csrf_token": token, "current_password": current,
                                                        "password": new, "password_confirm": again or new})
        return answer.status_code, answer.text

    status, text = change("not my password", NEW_PASSWORD)
    assert status == 422 and "current password is not correct" in text and "(current_password)" in text
    status, text = change(PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x")
    assert status == 422 and "(password_confirm)" in text
    status, text = change(PASSWORD, "password1234")
    assert status == 422 and "too common" in text
    with app.app_context():
        assert authenticate("vera", PASSWORD) is not None  # nothing changed so far

    status, _ = change(PASSWORD, NEW_PASSWORD)
    assert status == 303
    assert viewer.get("/").status_code == 200  # this session goes on
    assert elsewhere.get("/").status_code == 302  # the other one ended
    with app.app_context():
        assert authenticate("vera", PASSWORD) is None and authenticate("vera", NEW_PASSWORD) is not None
    assert ("vera", "user.password", "vera") in audit_actions(app)
    assert viewer.post("/account/password", data={"current_password": NEW_PASSWORD, "password": PASSWORD,
                                                  "password_confirm": PASSWORD}).status_code == 400  # CSRF


def test_admin_resets_a_password_and_the_users_sessions_end(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    admin, token = logged_in_client(app, "admin", "root")
    olga, _ = logged_in_client(app, "operator", "olga")
    assert admin.post("/admin/users/olga/password", data={"csrf_token": token, "password": "aaaaaaaa"}).status_code == 422
    assert olga.get("/").status_code == 200
    done = admin.post("/admin/users/olga/password", data={"csrf_token": token, "password": NEW_PASSWORD})
    assert done.status_code == 303
    assert olga.get("/").status_code == 302
    with app.app_context():
        assert authenticate("olga", NEW_PASSWORD) is not None
    assert ("root", "user.password_reset", "olga") in audit_actions(app)
    assert admin.post("/admin/users/root/password", data={"csrf_token": token,
                                                          "password": NEW_PASSWORD}).status_code == 409
    operator, operator_token = logged_in_client(app, "operator", "oscar")
    assert operator.post("/admin/users/olga/password", data={"csrf_token": operator_token,
                                                             "password": NEW_PASSWORD + "!"}).status_code == 403


class Clock:
    """``time.time`` for the console's session checks, moved by the test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(2_000_000_000.0)
    monkeypatch.setattr(console_sessions, "time", fake)
    return fake


POLL = {**htmx("overview-live"), "X-Console-Poll": "1"}


def test_session_ends_after_the_idle_time_and_polling_is_not_activity(make_app: Callable[..., Flask],
                                                                      clock: Clock) -> None:
    app = make_app(ASYNC_TASK_SESSION_IDLE_TIMEOUT=600, ASYNC_TASK_SESSION_LIFETIME=3600)
    client, _ = logged_in_client(app, "viewer", "vera")
    for _ in range(2):  # a page left open polls on
        clock.now += 300
        assert client.get("/", headers=POLL).status_code == 200
    clock.now += 1  # 601 s since the last real request: the polls did not count
    assert client.get("/", headers=POLL).status_code == 401
    assert client.get("/").status_code == 302
    assert "session has ended" in client.get("/login").text


def test_activity_keeps_a_session_until_its_absolute_lifetime(make_app: Callable[..., Flask], clock: Clock) -> None:
    app = make_app(ASYNC_TASK_SESSION_IDLE_TIMEOUT=600, ASYNC_TASK_SESSION_LIFETIME=3600)
    add_user(app, "vera", "viewer")
    client = app.test_client()
    login(client, "vera")
    for _ in range(11):  # an operator at work: a click every 5 minutes
        clock.now += 300
        assert client.get("/tasks").status_code == 200
    clock.now += 301  # 3,601 s after login
    assert client.get("/tasks").status_code == 302
    token = csrf_from(client.get("/login").text)
    assert client.post("/login", data={"username": "vera", "password": PASSWORD, "csrf_token": token}).status_code == 302
    assert client.get("/tasks").status_code == 200  # a new login starts a new lifetime


def test_session_settings_are_read_and_checked_from_config(make_app: Callable[..., Flask]) -> None:
    app = make_app(ASYNC_TASK_SESSION_IDLE_TIMEOUT="900", ASYNC_TASK_SESSION_LIFETIME="7200")
    assert app.config["ASYNC_TASK_SESSION_IDLE_TIMEOUT"] == 900.0
    assert app.permanent_session_lifetime.total_seconds() == 7200
    with pytest.raises(Exception, match="ASYNC_TASK_SESSION_IDLE_TIMEOUT"):
        make_app(ASYNC_TASK_SESSION_IDLE_TIMEOUT="0")
