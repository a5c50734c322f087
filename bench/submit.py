"""3. Submit rate: single and bulk through the JSON API, and in-process.

``POST /api/tasks`` through gunicorn, bulk ``POST /api/tasks/batch`` (1,000 a call), and
``AsyncTaskService.submit_many`` / ``submit_task`` in this process, all on PostgreSQL.

The HTTP load comes from ``wrk`` (C, keep-alive, on loopback) when it is installed, otherwise
from a few client processes using ``http.client``. gunicorn runs ``wsgi:app`` with the
project's gunicorn.conf.py (as deployed) and ``-w 4``, the in-process consumer off, so only
the web tier is measured.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import time
from typing import Any

from .common import (
    Context,
    Skipped,
    bench_app,
    dispose,
    module_available,
    percentile,
    pg_database,
    start_gunicorn,
)

NAME = "submit"
NOOP = "BENCH_NOOP"
GUNICORN_WORKERS = 4
CLIENT_CONNECTIONS = 16
BATCH_ITEMS = 1000


def create_api_token(app: Any, name: str = "bench") -> str:
    """A bearer token for the API: through ``webapp.accounts.tokens`` (stored hashed)."""
    from webapp.extensions import db

    with app.app_context():
        try:
            from webapp.accounts.tokens import create_token
        except ImportError:
            raise Skipped("webapp.accounts.tokens is not there yet (no way to make a token)") from None
        _row, secret = create_token(name)
        db.session.remove()
    return str(secret)


def in_process(ctx: Context, url: str) -> None:
    """``submit_many`` (1,000 a call) and one-at-a-time ``submit_task``, in this process."""
    from webapp.extensions import db
    from webapp.tasks.service import AsyncTaskService

    calls = 2 if ctx.quick else 20
    singles = 100 if ctx.quick else 1000
    app = bench_app(url)
    try:
        with app.app_context():
            service = AsyncTaskService()
            service.submit_many([{"task_type": NOOP, "payload": {"n": i}} for i in range(10)])  # warm-up
            began = time.perf_counter()
            for call in range(calls):
                service.submit_many([{"task_type": NOOP, "payload": {"n": call * BATCH_ITEMS + i}}
                                     for i in range(BATCH_ITEMS)])
                db.session.remove()
            rate = calls * BATCH_ITEMS / (time.perf_counter() - began)
            ctx.add(NAME, "AsyncTaskService.submit_many (1,000 a call)", rate, "tasks/s",
                    f"{calls} calls, in-process, PostgreSQL")
            began = time.perf_counter()
            for index in range(singles):
                service.submit_task(NOOP, {"n": index})
                db.session.remove()
            rate = singles / (time.perf_counter() - began)
            ctx.add(NAME, "AsyncTaskService.submit_task (one at a time)", rate, "tasks/s",
                    f"{singles} calls, one thread, in-process")
    finally:
        dispose(app)


def _request(conn: http.client.HTTPConnection, path: str, body: bytes, token: str) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json",
                                                   "Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    return response.status, response.read()


def bulk_api(ctx: Context, port: int, token: str) -> None:
    """Sequential ``POST /api/tasks/batch`` calls of 1,000 tasks each over one connection."""
    calls = 2 if ctx.quick else 20
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    item = {"task_type": NOOP, "payload": {"n": 0}}
    body = json.dumps({"tasks": [item] * BATCH_ITEMS}).encode()
    status, answer = _request(conn, "/api/tasks/batch", body, token)  # warm-up
    if status != 202:
        raise RuntimeError(f"POST /api/tasks/batch answered {status}: {answer[:300]!r}")
    durations = []
    began = time.perf_counter()
    for _ in range(calls):
        start = time.perf_counter()
        status, answer = _request(conn, "/api/tasks/batch", body, token)
        durations.append(time.perf_counter() - start)
        if status != 202:
            raise RuntimeError(f"POST /api/tasks/batch answered {status}: {answer[:300]!r}")
    rate = calls * BATCH_ITEMS / (time.perf_counter() - began)
    conn.close()
    ctx.add(NAME, "POST /api/tasks/batch (1,000 a call)", rate, "tasks/s",
            f"{calls} calls, one client; p50 {percentile(durations, 50) * 1000:.0f} ms a call")


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"task_type": "BENCH_NOOP", "payload": {"n": 1}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


def single_api_wrk(ctx: Context, port: int, token: str, seconds: int) -> tuple[float, str]:
    """``POST /api/tasks`` load from wrk; returns (requests/s, note)."""
    script = ctx.scratch / "submit.lua"
    script.write_text(WRK_SCRIPT % token)
    argv = ["wrk", "-t", "2", "-c", str(CLIENT_CONNECTIONS), "-d", f"{seconds}s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}/api/tasks"]
    output = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"could not read wrk's output:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if errors is not None and int(errors.group(1)) > 0:
        raise RuntimeError(f"{errors.group(1)} requests failed:\n{output}")
    p50 = re.search(r"50%\s+([\d.]+\w+)", output)
    p99 = re.search(r"99%\s+([\d.]+\w+)", output)
    note = (f"wrk, {CLIENT_CONNECTIONS} connections, {seconds} s; latency p50 "
            f"{p50.group(1) if p50 else '?'}, p99 {p99.group(1) if p99 else '?'}")
    return float(match.group(1)), note


def _client_process(args: tuple[int, str, float, int]) -> tuple[int, int, list[float]]:
    """One client process: ``threads`` keep-alive connections posting until the deadline."""
    import threading

    port, token, deadline, threads = args
    body = json.dumps({"task_type": NOOP, "payload": {"n": 1}}).encode()
    results: list[tuple[int, int, list[float]]] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        ok = failed = 0
        times: list[float] = []
        while time.time() < deadline:
            start = time.perf_counter()
            status, _ = _request(conn, "/api/tasks", body, token)
            times.append(time.perf_counter() - start)
            if status in (200, 202):
                ok += 1
            else:
                failed += 1
        conn.close()
        results.append((ok, failed, times))

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (sum(r[0] for r in results), sum(r[1] for r in results), [t for r in results for t in r[2]])


def single_api_python(port: int, token: str, seconds: int) -> tuple[float, str]:
    """``POST /api/tasks`` load from 2 client processes x 8 http.client threads."""
    start = time.time() + 0.5
    deadline = start + seconds
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        parts = pool.map(_client_process, [(port, token, deadline, CLIENT_CONNECTIONS // 2)] * 2)
    ok = sum(p[0] for p in parts)
    failed = sum(p[1] for p in parts)
    times = [t for p in parts for t in p[2]]
    if failed:
        raise RuntimeError(f"{failed} of {ok + failed} requests failed")
    note = (f"Python http.client, {CLIENT_CONNECTIONS} connections, {seconds} s; latency p50 "
            f"{percentile(times, 50) * 1000:.1f}ms, p99 {percentile(times, 99) * 1000:.1f}ms")
    return ok / (time.time() - start), note


def run(ctx: Context) -> None:
    """Submit rates: single and bulk through the API, and in-process."""
    with pg_database(NAME) as url:
        in_process(ctx, url)
        if not module_available("webapp.api"):
            ctx.add(NAME, "POST /api/tasks", None, "requests/s", "skipped: webapp.api is not there yet")
            ctx.add(NAME, "POST /api/tasks/batch (1,000 a call)", None, "tasks/s",
                    "skipped: webapp.api is not there yet")
            return
        app = bench_app(url)
        try:
            token = create_api_token(app)
        finally:
            dispose(app)
        server, port = start_gunicorn(ctx, url, "submit", workers=GUNICORN_WORKERS)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            status, answer = _request(conn, "/api/tasks", b'{"task_type": "BENCH_NOOP", "payload": {}}', token)
            conn.close()
            if status == 404:
                ctx.add(NAME, "POST /api/tasks", None, "requests/s", "skipped: POST /api/tasks answers 404")
                return
            if status not in (200, 202):
                raise RuntimeError(f"POST /api/tasks answered {status}: {answer[:300]!r}")
            seconds = 2 if ctx.quick else 10
            if shutil.which("wrk") and not os.environ.get("BENCH_NO_WRK"):
                single_api_wrk(ctx, port, token, 1)  # warm-up: every worker connected and cached
                rate, note = single_api_wrk(ctx, port, token, seconds)
            else:
                rate, note = single_api_python(port, token, seconds)
            ctx.add(NAME, f"POST /api/tasks (gunicorn -w {GUNICORN_WORKERS})", rate, "requests/s", note)
            ctx.shared["submit_single"] = rate
            bulk_api(ctx, port, token)
        finally:
            server.stop()
