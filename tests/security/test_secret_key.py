"""Issue 10 item 22: a short or documented SECRET_KEY stops start-up outside development and testing.

``production`` builds apps the way gunicorn does (no TESTING, no FLASK_DEBUG); the refusal is a
``ConfigError`` whose one-line message names the setting and how to fix it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import ROOT
from webapp import create_app
from webapp.config import ConfigError
from webapp.extensions import db

DOCUMENTED_PLACEHOLDER = "replace-with-the-output-of-python3-c-import-secrets-print-secrets.token_hex-32"
GOOD_KEY = "9f3c2a7be41d8056c3f1e2d4a6b8c0e1f3a5b7c9d1e3f5a7"


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch, sqlite_template: Path,
               tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Apps configured like production: no TESTING, no FLASK_DEBUG, no .env, SECRET_KEY as given."""
    for name in ("SECRET_KEY", "FLASK_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOTENV_PATH", str(tmp_path / "no-such.env"))
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(tmp_path / "instance"))
    database = tmp_path / "production.sqlite3"
    database.write_bytes(sqlite_template.read_bytes())
    made: list[Flask] = []

    def factory(**config: object) -> Flask:
        app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
                          "ASYNC_TASK_PROCESSORS": ["tests.processors"], **config})
        made.append(app)
        return app

    yield factory
    for app in made:
        with app.app_context():
            db.engine.dispose()


@pytest.mark.parametrize("key", ["x", "test-secret", "k" * 31, DOCUMENTED_PLACEHOLDER, "change-me",
                                 "a" * 64, "0123" * 16])
def test_weak_keys_stop_start_up_with_one_line_naming_the_setting(production: Callable[..., Flask],
                                                                  key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        production(SECRET_KEY=key)
    message = str(refused.value)
    assert message.startswith("SECRET_KEY ") and "\n" not in message
    assert "secrets.token_hex(32)" in message  # the fix


def test_the_environment_is_checked_too(production: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", DOCUMENTED_PLACEHOLDER)
    with pytest.raises(ConfigError, match="SECRET_KEY is a documented placeholder"):
        production()


def test_a_long_random_key_and_the_generated_key_are_accepted(production: Callable[..., Flask]) -> None:
    assert production(SECRET_KEY=GOOD_KEY).config["SECRET_KEY"] == GOOD_KEY
    assert len(production().config["SECRET_KEY"]) == 64  # nothing configured: generated, not refused


def test_development_and_testing_may_use_any_key(production: Callable[..., Flask],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert production(SECRET_KEY="x", TESTING=True).config["SECRET_KEY"] == "x"
    monkeypatch.setenv("FLASK_DEBUG", "1")
    assert production(SECRET_KEY="x").config["SECRET_KEY"] == "x"


def test_gunicorn_refuses_to_serve_with_a_placeholder_key(tmp_path: Path) -> None:
    """The real start: the process exits non-zero and says which setting to fix."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DOTENV_PATH": str(tmp_path / "none.env"),
           "SECRET_KEY": DOCUMENTED_PLACEHOLDER, "DATABASE_URL": f"sqlite:///{tmp_path}/g.sqlite3",
           "ASYNC_TASK_CONSUMER_ENABLED": "false"}
    started = subprocess.run([sys.executable, "-c", "import wsgi"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert "SECRET_KEY is a documented placeholder" in started.stderr
