"""``make run`` serves the console and processes the example tasks (the README's first command)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status)
    except Exception:
        return None


def test_make_run_serves_the_console_and_processes_example_tasks(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/run.sqlite3", "PORT": str(port),
           "ASYNC_TASK_POLL_INTERVAL": "0.5", "ASYNC_TASK_HEARTBEAT_INTERVAL": "1"}
    env.pop("ASYNC_TASK_PROCESSORS", None)  # make run's own default: the example task types
    env["ASYNC_TASK_DEV_MAIL_DIR"] = str(tmp_path / "dev-mail")  # the seeded tasks' mails stay out of instance/
    log = tmp_path / "make-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["make", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: _status(f"http://127.0.0.1:{port}/login") == 200 or proc.poll() is not None,
                   timeout=120, interval=0.5, message="make run to serve /login")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert "password" in log.read_text()  # the first run prints how to log in
        flask = [str(ROOT / ".venv" / "bin" / "flask"), "--app", "webapp", "tasks"]
        cli_env = {**env, "ASYNC_TASK_PROCESSORS": "webapp.examples"}
        submitted = subprocess.run([*flask, "submit", "SEND_REPORT", "--payload", '{"report": "daily"}'],
                                   cwd=ROOT, env=cli_env, capture_output=True, text=True, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        task_id = submitted.stdout.strip().splitlines()[-1]

        def finished() -> bool:
            shown = subprocess.run([*flask, "show", task_id], cwd=ROOT, env=cli_env,
                                   capture_output=True, text=True, timeout=60)
            return shown.returncode == 0 and json.loads(shown.stdout)["status"] == "SUCCESS"

        wait_until(finished, timeout=30, interval=0.5, message="the example task to succeed")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.2)
