"""Secrets, cookies and headers: no default SECRET_KEY, cookie flags, headers on error answers too.

What the application does without ``SECRET_KEY`` (issue 6 asks to document which): it is NOT a
start-up error. ``create_app`` generates a 256-bit key into ``<instance>/secret_key`` with mode
0600 and reuses it on every later start, so every process of one installation that shares the
instance folder signs sessions with the same key. There is no built-in default key.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import ROOT
from tests.console_support import add_user, csrf_from, logged_in_client
from tests.security.support import assert_security_headers
from webapp import create_app
from webapp.extensions import db

HTTPS = "https://localhost"


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch, sqlite_template: Path,
               tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Factory for apps configured like production: no TESTING, no SECRET_KEY, no .env.

    The instance folder (where the generated key lives) is ``tmp_path/<name>``: Flask finds it
    through ``auto_find_instance_path``, pointed here so the real ``instance/`` is never touched.
    """
    for name in ("SECRET_KEY", "SESSION_COOKIE_SECURE", "FLASK_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no-such.env"))
    database = tmp_path / "production.sqlite3"
    database.write_bytes(sqlite_template.read_bytes())
    made: list[Flask] = []

    def factory(instance: str = "instance", **config: object) -> Flask:
        folder = tmp_path / instance
        monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(folder))
        app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
                          "ASYNC_TASK_PROCESSORS": ["tests.processors"], **config})
        made.append(app)
        return app

    yield factory
    for app in made:
        with app.app_context():
            db.engine.dispose()


def test_without_secret_key_a_generated_key_is_persisted_0600_and_reused(production: Callable[..., Flask],
                                                                         tmp_path: Path) -> None:
    first = production()
    assert not first.testing and not first.debug
    key_file = tmp_path / "instance" / "secret_key"
    key = first.config["SECRET_KEY"]
    assert isinstance(key, str) and len(key) == 64 and int(key, 16) >= 0  # 256 random bits, hex
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # The next start (another gunicorn worker, a restart) reads the same key: sessions survive.
    second = production()
    assert second.config["SECRET_KEY"] == key
    signed = first.session_interface.get_signing_serializer(first).dumps({"user_id": 1})
    assert second.session_interface.get_signing_serializer(second).loads(signed) == {"user_id": 1}

    # Another installation (another instance folder) gets its own key: nothing is a default.
    other = production(instance="elsewhere")
    assert other.config["SECRET_KEY"] != key
    assert other.session_interface.get_signing_serializer(other).loads_unsafe(signed)[0] is False


def test_a_configured_secret_key_is_used_and_nothing_is_written(production: Callable[..., Flask],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("SECRET_KEY", "from-the-environment-" + "k" * 40)
    app = production()
    assert app.config["SECRET_KEY"] == "from-the-environment-" + "k" * 40
    assert not (tmp_path / "instance" / "secret_key").exists()


def test_a_half_written_key_file_is_not_used_as_an_empty_key(production: Callable[..., Flask],
                                                             tmp_path: Path) -> None:
    """The state a concurrent first start leaves for a moment: the file exists, still empty."""
    instance = tmp_path / "instance"
    instance.mkdir()
    fd = os.open(instance / "secret_key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        app = production()
    except Exception as exc:  # a clear start-up error is an acceptable answer too
        assert "SECRET_KEY" in str(exc) or "secret_key" in str(exc)
        return
    assert len(app.config["SECRET_KEY"] or "") >= 32


def test_no_secret_is_committed() -> None:
    """No key file, no .env in git; the committed .flaskenv sets no SECRET_KEY."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert not [path for path in tracked if path.startswith("instance/") or path.endswith("secret_key")
                or Path(path).name == ".env"]
    for path in tracked:
        if Path(path).name in (".flaskenv", ".env.example", "env.example"):
            assert "SECRET_KEY=" not in (ROOT / path).read_text(), path


def test_cookies_in_production_are_secure_httponly_samesite_lax(production: Callable[..., Flask]) -> None:
    app = production()
    add_user(app, "olga", "viewer")
    client = app.test_client()
    page = client.get("/login", base_url=HTTPS)
    session_cookie = page.headers["Set-Cookie"]  # the session holding the login form's CSRF token
    for flag in ("Secure", "HttpOnly", "SameSite=Lax"):
        assert flag in session_cookie, session_cookie
    # Flask-WTF checks the Referer on HTTPS: send it as a browser does.
    referer = {"Referer": f"{HTTPS}/login"}
    login = client.post("/login", base_url=HTTPS, headers=referer,
                        data={"username": "olga", "password": "correct horse battery",
                              "csrf_token": csrf_from(page.text)})
    assert login.status_code == 302, login.text[:300]
    cookie = login.headers["Set-Cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=Lax"):
        assert flag in cookie, cookie
    overview = client.get("/", base_url=HTTPS)
    assert overview.status_code == 200
    assert overview.headers["Cache-Control"] == "no-store"
    # The language cookie carries the same flags (the console's other cookie).
    language = client.post("/language", base_url=HTTPS, headers={"Referer": f"{HTTPS}/"},
                           data={"lang": "en", "next": "/", "csrf_token": csrf_from(overview.text)})
    assert language.status_code == 303
    lang_cookie = [v for v in language.headers.getlist("Set-Cookie") if v.startswith("console_lang=")]
    assert lang_cookie and all(flag in lang_cookie[0] for flag in ("Secure", "HttpOnly", "SameSite=Lax"))


def test_cookies_are_not_secure_when_debugging(production: Callable[..., Flask]) -> None:
    """``flask run --debug`` on plain HTTP must still be able to log in."""
    app = production(DEBUG=True)
    cookie = app.test_client().get("/login").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_a_session_cookie_copied_before_logout_is_dead_after_it(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    client, token = logged_in_client(app, "operator", "olga")
    copied = client.get_cookie("session")
    assert copied is not None
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/").status_code == 302
    replay = app.test_client()
    replay.set_cookie("session", copied.value)
    assert replay.get("/").status_code == 302  # the old cookie must be logged out too


def test_security_headers_on_error_answers_too(make_app: Callable[..., Flask]) -> None:
    """404, 405, 413, CSRF 400, 401, 403, 500 and static files: the same headers as any page."""
    app = make_app(PROPAGATE_EXCEPTIONS=False, MAX_CONTENT_LENGTH=2048)

    def boom() -> str:
        raise RuntimeError("a bug in a view")

    app.add_url_rule("/security-test-boom", "security_test_boom", boom)
    viewer, token = logged_in_client(app, "viewer")
    anonymous = app.test_client()
    answers = {
        "console 404": (viewer.get("/no-such-page"), 404),
        "task 404": (viewer.get("/tasks/999999"), 404),
        "API 404": (anonymous.get("/api/no-such-call"), 404),
        "405": (viewer.get("/logout"), 405),
        "CSRF 400": (viewer.post("/tasks/1/cancel"), 400),
        "403": (viewer.get("/admin/users"), 403),
        "API 401": (anonymous.get("/api/tasks"), 401),
        "413": (viewer.post("/tasks/bulk", data={"csrf_token": token, "ids": "1" * 4096}), 413),
        "500": (anonymous.get("/security-test-boom"), 500),
        "static": (anonymous.get("/static/console.css"), 200),
        "htmx 401": (anonymous.get("/tasks", headers={"HX-Request": "true"}), 401),
    }
    for name, (response, status) in answers.items():
        assert response.status_code == status, (name, response.status_code)
        assert_security_headers(response, name)
    # A server error shows no traceback or exception text.
    assert "a bug in a view" not in answers["500"][0].get_data(as_text=True)


def test_processes_starting_together_share_one_complete_key(tmp_path: Path) -> None:
    """Eight processes generating the instance key at once all end up with the same full key."""
    script = (
        "import sys; from webapp import _instance_secret_key as k; "
        "print(k(sys.argv[1]))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    # Eight interpreters importing the app at once on a busy 2-core machine take a while.
    keys = [proc.communicate(timeout=180)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]
