"""What a first-time user trips on under ``make run`` (issue 16 items 1, 2, 5, 6, 13): example
tasks seeded on the first run only, mail links on the port the console runs on, mail kept in
the dev outbox, one's own processors loaded next to the examples, hints naming ``.venv/bin/flask``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.conftest import ROOT, wait_until
from webapp import create_app
from webapp.examples import example_tasks, seed_examples
from webapp.notifications.dev_mail import list_dev_mails
from webapp.tasks import AsyncTaskService

FLASK = str(ROOT / ".venv" / "bin" / "flask")
MAKE_PROCESSORS = "webapp.examples,tests.notify_processors"


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except Exception:
        return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_dry_run(**env: str) -> str:
    """The commands ``make run`` would execute with ``env``."""
    full = {key: value for key, value in os.environ.items()
            if key not in ("ASYNC_TASK_PROCESSORS", "MAIL_SERVER", "ASYNC_TASK_BASE_URL")}
    run = subprocess.run(["make", "-n", "run"], cwd=ROOT, env={**full, **env}, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_make_run_keeps_the_examples_next_to_ones_own_processors() -> None:
    assert "ASYNC_TASK_PROCESSORS=webapp.examples " in _make_dry_run()
    assert "ASYNC_TASK_PROCESSORS=webapp.examples,myapp.tasks " in _make_dry_run(ASYNC_TASK_PROCESSORS="myapp.tasks")
    both = _make_dry_run(ASYNC_TASK_PROCESSORS="myapp.tasks,webapp.examples")
    assert "ASYNC_TASK_PROCESSORS=myapp.tasks,webapp.examples " in both  # not loaded twice


def test_make_run_derives_mail_links_from_the_port_and_keeps_mail_in_the_dev_outbox() -> None:
    commands = _make_dry_run(PORT="5101")
    assert "ASYNC_TASK_BASE_URL=${ASYNC_TASK_BASE_URL:-http://127.0.0.1:5101}" in commands
    assert f"ASYNC_TASK_DEV_MAIL_DIR=${{ASYNC_TASK_DEV_MAIL_DIR-{ROOT}/instance/dev-mail}}" in commands
    assert "--port 5101" in commands
    assert "ASYNC_TASK_DEV_MAIL_DIR=${ASYNC_TASK_DEV_MAIL_DIR-}" in _make_dry_run(MAIL_SERVER="smtp.example.com")
    assert ".venv/bin/flask --app webapp" in commands  # the printed hint works without an active venv


def test_seeding_queues_every_example_type_once(make_app: Any) -> None:
    app: Flask = make_app("sqlite", ASYNC_TASK_PROCESSORS=["webapp.examples"])
    with app.app_context():
        service = AsyncTaskService()
        queued = seed_examples(service)
        assert queued == len(example_tasks(datetime.now(UTC))) >= 4
        types = {task.task_type for task in service.list_tasks(limit=100).items}
        assert types == set(app.extensions["async_task"].registry.task_types())
        assert seed_examples(service) == 0  # a later run seeds nothing
        assert len(service.list_tasks(limit=100).items) == queued


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_make_run_seeds_examples_and_mails_link_to_its_port(tmp_path: Path) -> None:
    port = _free_port()
    outbox = tmp_path / "dev-mail"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/run.sqlite3", "PORT": str(port),
           "ASYNC_TASK_POLL_INTERVAL": "0.5", "ASYNC_TASK_HEARTBEAT_INTERVAL": "1",
           "ASYNC_TASK_PROCESSORS": "tests.notify_processors", "ASYNC_TASK_DEV_MAIL_DIR": str(outbox)}
    for name in ("MAIL_SERVER", "MAIL_DEFAULT_SENDER", "ASYNC_TASK_BASE_URL"):
        env.pop(name, None)
    log = tmp_path / "make-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: _status(f"http://127.0.0.1:{port}/login") == 200 or proc.poll() is not None,
                   timeout=150, interval=0.5, message="make run to serve /login")
        assert proc.poll() is None, log.read_text()[-3000:]
        printed = log.read_text()
        assert "Queued 8 example tasks" in printed and ".venv/bin/flask --app webapp" in printed
        cli_env = {**env, "ASYNC_TASK_PROCESSORS": MAKE_PROCESSORS}
        listed = subprocess.run([FLASK, "--app", "webapp", "tasks", "list"], cwd=ROOT, env=cli_env,
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert {"CREATE_SERVER", "SEND_REPORT", "IMPORT_FILE", "ALWAYS_FAILS"} <= set(listed.stdout.split())

        # One's own processors run next to the examples; its mail lands in the dev outbox.
        submitted = subprocess.run([FLASK, "--app", "webapp", "tasks", "submit", "MAIL_OK", "--payload", "{}",
                                    "--created-by", "me@example.com"],
                                   cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip().splitlines()[-1]

        def mail_for_task() -> str | None:
            return next((mail.text for mail in list_dev_mails(str(outbox)) if mail.recipient == "me@example.com"),
                        None)

        wait_until(lambda: mail_for_task() is not None, timeout=60, interval=0.5,
                   message="the MAIL_OK task's mail in the dev outbox")
        mail = mail_for_task() or ""
        assert f"http://127.0.0.1:{port}/tasks/{task_id}" in mail
        shown = subprocess.run([FLASK, "--app", "webapp", "tasks", "show", task_id], cwd=ROOT, env=cli_env,
                               capture_output=True, text=True, timeout=60)
        assert json.loads(shown.stdout)["status"] == "SUCCESS"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.2)
    # The SIGTERM'd server deregistered its consumer (issue 16 item 10): no worker left RUNNING
    # to be declared DEAD later.
    app = create_app({"TESTING": True, "SECRET_KEY": "x" * 40, "ASYNC_TASK_CONSUMER_ENABLED": False,
                      "SQLALCHEMY_DATABASE_URI": env["DATABASE_URL"], "ASYNC_TASK_PROCESSORS": []})
    with app.app_context():
        workers = AsyncTaskService().workers(include_stopped=True)
        assert workers and [w.status for w in workers] == ["STOPPED"] * len(workers), \
            [(w.id, w.status) for w in workers]
