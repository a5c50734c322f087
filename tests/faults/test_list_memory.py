"""Issue 10 item 6: large payloads do not exhaust the web workers' memory.

200 tasks with 1 MB payloads (and 100 kB results) on PostgreSQL; ten clients ask
``GET /api/tasks?limit=500`` at once from a real ``gunicorn wsgi:app`` (2 workers x 4 threads).
Before the fix each answer was 210 MB and ten at once took the workers from 0.6 GB to 5.8 GB.
Now a list row carries previews cut by the database, and every worker stays under 300 MB RSS.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from sqlalchemy import text

from tests.conftest import ROOT, wait_until
from tests.proc_utils import free_port
from webapp.accounts.tokens import create_token
from webapp.extensions import db

TASKS = 200
PAYLOAD_BYTES = 1_000_000
RSS_LIMIT_MB = 300
CLIENTS = 10

INSERT_BIG_TASKS = text(f"""
INSERT INTO async_task (task_type, status, priority, payload, result, retry_count, max_retry_count,
                        retry_strategy, retry_interval, retry_jitter, created_at, updated_at, next_run_at,
                        attempts, recovery_count, principal)
SELECT 'NOOP', 'SUCCESS', 0, jsonb_build_object('n', g, 'blob', repeat('x', {PAYLOAD_BYTES})),
       jsonb_build_object('out', repeat('y', 100000)), 0, 3, 'FIXED', 60, 0, now(), now(), now(), 1, 0,
       'token:memory'
FROM generate_series(1, {TASKS}) AS g
""")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _get(url: str, token: str | None = None, timeout: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_ten_concurrent_lists_of_1mb_payloads_keep_every_worker_under_300mb(
        make_app: Callable[..., Flask], pg_url: str, tmp_path: Path) -> None:
    app = make_app("postgres")
    with app.app_context():
        token = create_token("memory", reach="all")[1]
        db.session.execute(INSERT_BIG_TASKS)
        db.session.commit()

    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ASYNC_TASK_", "FLASK_", "GUNICORN_")) and name != "SECRET_KEY"}
    env.update({"PYTHONPATH": str(ROOT), "DOTENV_PATH": str(tmp_path / "none.env"), "DATABASE_URL": pg_url,
                "SECRET_KEY": "list-memory-test-5f0e9d8c7b6a5f4e3d2c", "ASYNC_TASK_CONSUMER_ENABLED": "false",
                "ASYNC_TASK_PROCESSORS": "tests.processors", "PORT": str(port), "WEB_CONCURRENCY": "2",
                "GUNICORN_THREADS": "4"})
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "wsgi:app"], cwd=ROOT, env=env,
                                  stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    peaks: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):  # a sampling period, not a wait for some state
            for pid in _children(server.pid):
                peaks[pid] = max(peaks.get(pid, 0.0), _rss_mb(pid))

    answers: list[tuple[int, bytes]] = []
    try:
        wait_until(lambda: server.poll() is not None or _get(f"{base}/healthz")[0] == 200, timeout=60,
                   message="gunicorn answering")
        assert server.poll() is None, log_path.read_text()[-3000:]
        for _worker in _children(server.pid):  # warm up: a list answered per worker (roughly)
            _get(f"{base}/api/tasks?limit=1", token)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = threading.Barrier(CLIENTS)

        def client() -> None:
            start.wait(timeout=30)
            answers.append(_get(f"{base}/api/tasks?limit=500", token))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        done.set()
        sampler.join(timeout=5)
    finally:
        done.set()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    assert len(answers) == CLIENTS and all(status == 200 for status, _ in answers), \
        [(status, body[:200]) for status, body in answers]
    for _, body in answers:
        assert len(body) < 1.1 * 1024 * 1024  # the page's size bound (LIST_BYTES_BUDGET), not 210 MB
        page = json.loads(body)
        assert page["items"], page
        first = page["items"][0]
        assert first["payload"] is None and first["payload_truncated"] is True
        assert len(first["payload_preview"]) <= 256 and first["payload_preview"].startswith("{")
        assert first["result_truncated"] is True
    assert peaks, "no gunicorn worker was sampled"
    print(f"worker RSS peaks (MB): { {pid: round(mb, 1) for pid, mb in peaks.items()} }; "
          f"answer sizes (bytes): {sorted(len(body) for _, body in answers)}")
    assert max(peaks.values()) < RSS_LIMIT_MB, f"worker RSS peaks (MB): {peaks}"
    # The whole value is still one call away.
    with app.app_context():
        task_id = db.session.execute(text("SELECT max(id) FROM async_task")).scalar_one()
    client = app.test_client()
    whole = client.get(f"/api/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert len(whole["payload"]["blob"]) == PAYLOAD_BYTES
