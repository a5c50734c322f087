"""Issue 10 item 23: a token sent in a query string is refused, and never written to the access log.

A real ``gunicorn wsgi:app`` with the shipped ``gunicorn.conf.py``: query strings of ``/api/``
requests are left out of its access log; elsewhere parameters named like credentials are redacted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, wait_until
from tests.proc_utils import free_port
from webapp.logging_setup import AccessLogRedactionFilter, redact_query

SECRET = "tdk_QueryStringSecretThatMustNotBeLogged"


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_gunicorn_access_log_keeps_no_api_query_string(sqlite_template: Path, tmp_path: Path) -> None:
    database = tmp_path / "log.sqlite3"
    database.write_bytes(sqlite_template.read_bytes())
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ASYNC_TASK_", "FLASK_", "GUNICORN_")) and name not in ("SECRET_KEY",)}
    port = free_port()
    env.update({"PYTHONPATH": str(ROOT), "DOTENV_PATH": str(tmp_path / "none.env"),
                "DATABASE_URL": f"sqlite:///{database}", "SECRET_KEY": "access-log-test-5f0e9d8c7b6a5f4e3d2c",
                "ASYNC_TASK_CONSUMER_ENABLED": "false", "GUNICORN_BIND": f"127.0.0.1:{port}",
                "WEB_CONCURRENCY": "1"})
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "wsgi:app"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: server.poll() is not None or _get(f"{base}/healthz") == 200, timeout=60,
                       message="gunicorn answering")
            assert server.poll() is None, log_path.read_text()
            assert _get(f"{base}/api/tasks?access_token={SECRET}&limit=5") == 401
            assert _get(f"{base}/healthz?next=/tasks&token={SECRET}") == 200
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    text = log_path.read_text()
    assert "GET /api/tasks?[redacted] HTTP/1.1\" 401" in text, text[-3000:]
    assert "GET /healthz?next=/tasks&token=[redacted] HTTP/1.1\" 200" in text, text[-3000:]
    assert SECRET not in text


def test_redaction_rules() -> None:
    assert redact_query("/api/tasks", "status=FAILURE") == "[redacted]"
    assert redact_query("/tasks", "status=FAILURE&task_type=A") == "status=FAILURE&task_type=A"
    assert redact_query("/tasks", "api_key=1&password=2&x=tdk_abc") == \
        "api_key=[redacted]&password=[redacted]&x=[redacted]"
    assert redact_query("/tasks", "") == ""


def test_the_filter_leaves_other_records_alone() -> None:
    record = logging.LogRecord("gunicorn.access", logging.INFO, __file__, 1, "plain %s", ("text",), None)
    assert AccessLogRedactionFilter().filter(record) and record.getMessage() == "plain text"
