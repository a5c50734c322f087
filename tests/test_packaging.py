"""``pip install .`` (not editable) into a fresh virtualenv, then run the installed app from a
folder that is not the checkout: migrations with ``flask --app webapp db upgrade`` and the
console with its templates and static files under ``gunicorn 'webapp:create_app()'``.

The install is real (dependencies from the package index, a wheel built by setuptools); pip's
cache keeps repeat runs to a few tens of seconds.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until
from tests.smtp_server import free_port

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT = 300
SCRUBBED_PREFIXES = ("ASYNC_TASK_", "FLASK_", "GUNICORN_", "MAIL_", "PYTHON", "VIRTUAL_ENV")
SCRUBBED_NAMES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "WEB_CONCURRENCY", "PORT", "HOST")


def clean_environment(**settings: str) -> dict[str, str]:
    """The shell of someone who installed the package: no PYTHONPATH, no project settings."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(SCRUBBED_PREFIXES) and name not in SCRUBBED_NAMES}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1"})
    env.update(settings)
    return env


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the project installed from the checkout by ``pip install .``."""
    venv = tmp_path_factory.mktemp("pkg") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)],
                            env=clean_environment(), capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv


def site_webapp(venv: Path) -> Path:
    found = list(venv.glob("lib/python*/site-packages/webapp"))
    assert len(found) == 1, found
    return found[0]


def test_the_wheel_carries_templates_static_files_and_migrations(installed):
    package = site_webapp(installed)
    for folder in ("templates", "static", "migrations"):
        shipped = sorted(p.relative_to(package / folder) for p in (package / folder).rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts)
        in_checkout = sorted(p.relative_to(ROOT / folder) for p in (ROOT / folder).rglob("*")
                             if p.is_file() and "__pycache__" not in p.parts)
        assert shipped == in_checkout, f"{folder}/ differs between the checkout and the installed package"
    assert (package / "migrations" / "env.py").is_file()
    assert (package / "templates" / "login.html").is_file()


def test_installed_app_migrates_and_serves_the_console_from_any_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    database = tmp_path / "installed.sqlite3"
    env = clean_environment(DATABASE_URL=f"sqlite:///{database}", SECRET_KEY="packaging-test-secret-5f0e9d8c7b6a5f4e3d2c",
                            DOTENV_PATH=str(tmp_path / "no-such.env"))

    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import webapp; print(webapp.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed), "webapp must come from the virtualenv"

    upgrade = subprocess.run([str(installed / "bin" / "flask"), "--app", "webapp", "db", "upgrade"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert {"async_task", "task_event", "worker", "notification", "console_user"} <= tables
    heads = sorted(p.stem.split("_")[0] for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert version == heads[-1]

    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [str(installed / "bin" / "gunicorn"), "webapp:create_app()", "--bind", f"127.0.0.1:{port}",
             "--workers", "1"],
            cwd=elsewhere, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: server.poll() is not None or get(f"{base}/healthz")[0] == 200, timeout=60,
                       message="installed gunicorn answering")
            assert server.poll() is None, log_path.read_text()
            status, page = get(f"{base}/login")
            assert status == 200
            assert b"<form" in page and b"password" in page.lower()
            static_files = [p for p in (ROOT / "static").rglob("*") if p.is_file()]
            assert static_files
            for path in static_files:
                status, body = get(f"{base}/static/{path.relative_to(ROOT / 'static').as_posix()}")
                assert status == 200, path
                assert body == path.read_bytes(), path
            assert get(f"{base}/readyz")[0] == 200
        finally:
            server.terminate()
            server.wait(timeout=30)
