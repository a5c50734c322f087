"""Issue 10 item 15: no ``flask`` command but ``tasks worker`` starts a consumer, whatever app module
it names. Before the fix, importing ``wsgi`` in ``flask --app wsgi db upgrade`` started the embedded
consumer, which wrote its worker row into a database whose tables did not exist yet.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_ADMIN_URL, ROOT, wait_until
from tests.proc_utils import FLASK, worker_environment

CUSTOM_APP = '''
from webapp import create_app
from webapp.tasks.engine import start_embedded_consumer

app = create_app()
consumer = start_embedded_consumer(app)
'''


@pytest.fixture
def fresh_database(pg_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (no tables at all), dropped afterwards."""
    name = f"taskdeck_fresh_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _env(database_url: str, tmp_path: Path) -> dict[str, str]:
    env = worker_environment(database_url, redis_url=None, lock_prefix=f"cli-{uuid.uuid4().hex[:6]}:",
                             run_log=tmp_path / "runs.log", tmp_path=tmp_path)
    env.pop("ASYNC_TASK_CONSUMER_ENABLED", None)  # the default: an embedded consumer is wanted
    env["PYTHONPATH"] = f"{ROOT}:{tmp_path}"
    return env


def _workers(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url) as connection:
        return [(row[0], row[1]) for row in connection.execute("SELECT id, status FROM worker")]


@pytest.mark.parametrize("app_module", ["wsgi", "custom_app"])
def test_db_upgrade_on_a_new_database_starts_no_consumer(fresh_database: str, tmp_path: Path,
                                                         app_module: str) -> None:
    (tmp_path / "custom_app.py").write_text(CUSTOM_APP)
    env = _env(fresh_database, tmp_path)
    upgraded = subprocess.run([FLASK, "--app", app_module, "db", "upgrade"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    listed = subprocess.run([FLASK, "--app", app_module, "tasks", "list"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert _workers(fresh_database) == []  # neither command registered (or ran) a consumer


def test_tasks_worker_runs_exactly_its_own_consumer(fresh_database: str, tmp_path: Path) -> None:
    env = _env(fresh_database, tmp_path)
    upgraded = subprocess.run([FLASK, "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen([FLASK, "--app", "wsgi", "tasks", "worker"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _workers(fresh_database), timeout=60, message="the worker to register")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()
    rows = _workers(fresh_database)
    assert len(rows) == 1, (rows, (tmp_path / "worker.log").read_text()[-3000:])
