"""SQLite under write pressure: 4 ``flask tasks worker`` processes and API submits at once.

For 20 s (the issue says 60 s; 20 s keeps the fault suite within its time budget on two cores
and already means thousands of write transactions from five processes), four client threads
POST tasks to ``/api/tasks`` on a real HTTP server (werkzeug, threaded, in this process) while
four worker processes claim and finish them in the same SQLite file. Expected: every API
answer is 202, no "database is locked" (or any traceback) in any worker's log, and every
submitted task runs exactly once, its effect committed once.
"""

from __future__ import annotations

import collections
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from tests.faults.support import (
    FAULT_PROCESSORS,
    PROC_TYPE,
    assert_logs_clean,
    assert_succeeded_exactly_once,
    count_where,
    serve_in_thread,
    wait_for,
    wait_for_workers,
)
from tests.proc_utils import ProcessPool, worker_environment
from webapp.accounts.tokens import create_token
from webapp.extensions import db

pytestmark = [pytest.mark.slow]

DURATION = 20.0
CLIENTS = 4
WORKERS = 4
# SQLite's busy handler is not a fair queue: under this write pressure a heartbeat can wait
# over a second for the write lock, and the 0.5 s heartbeat of the other process tests (stale
# after 1.5 s) then declares live workers dead (their tasks re-run; fencing keeps one commit).
# 2 s (stale after 6 s) is still far below the 5 s default.
HEARTBEAT = 2.0


def post_task(base_url: str, token: str, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    """POST one task; (HTTP status, JSON body)."""
    request = urllib.request.Request(
        f"{base_url}/api/tasks", method="POST",
        data=json.dumps({"task_type": PROC_TYPE, "payload": payload}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")[:500]}


@pytest.mark.timeout(150)
def test_sqlite_with_four_workers_and_api_writes(make_app: Callable[..., Flask], pool: ProcessPool,
                                                 run_log: Path, lock_prefix: str, tmp_path: Path) -> None:
    app = make_app("sqlite", ASYNC_TASK_PROCESSORS=FAULT_PROCESSORS.split(","))
    with app.app_context():
        _, token = create_token("faults-sqlite")
        db.session.remove()
    env = worker_environment(app.config["SQLALCHEMY_DATABASE_URI"], redis_url=None, lock_prefix=lock_prefix,
                             run_log=run_log, tmp_path=tmp_path, ASYNC_TASK_PROCESSORS=FAULT_PROCESSORS,
                             ASYNC_TASK_HEARTBEAT_INTERVAL=HEARTBEAT)
    for index in range(WORKERS):
        pool.start_worker(f"w{index}", env, concurrency=2)
    wait_for_workers(app, pool, WORKERS)

    answers: collections.Counter[int] = collections.Counter()
    failures: list[tuple[int, dict[str, object]]] = []
    ids: list[int] = []
    writers: list[int] = []
    lock = threading.Lock()

    with serve_in_thread(app) as base_url:
        stop_at = time.monotonic() + DURATION

        def client(number: int) -> None:
            sent = 0
            while time.monotonic() < stop_at:
                writes = sent % 2 == 0
                status, body = post_task(base_url, token, {"seconds": 0.01, "write_db": writes,
                                                            "client": number})
                sent += 1
                with lock:
                    answers[status] += 1
                    if status != 202:
                        failures.append((status, body))
                        continue
                    ids.append(int(body["id"]))  # type: ignore[call-overload]
                    if writes:
                        writers.append(int(body["id"]))  # type: ignore[call-overload]

        clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(CLIENTS)]
        started = time.monotonic()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(DURATION + 70)
        submit_seconds = time.monotonic() - started
        assert not any(thread.is_alive() for thread in clients), "an API client hung"
        assert not failures, f"API answers other than 202: {answers}; first: {failures[:3]}"
        done_during = count_where(app, ids, "SUCCESS")
        wait_for(pool, lambda: count_where(app, ids, "SUCCESS") == len(ids), timeout=60, interval=0.5,
                 message=f"all {len(ids)} API-submitted tasks SUCCESS")
        drained = time.monotonic() - started

    assert len(ids) > 200, f"too few submits to mean anything: {len(ids)}"
    assert_logs_clean(pool.all_logs(), "database is locked", "Traceback")
    report = assert_succeeded_exactly_once(app, run_log, ids, writers)
    assert not report.reruns, report.reruns
    by_pid = collections.Counter(r.split()[3] for r in run_log.read_text().splitlines() if r.startswith("done"))
    assert len(by_pid) == WORKERS, f"not every worker took part: {by_pid}"
    print(f"\nFIGURE SQLite pressure: {len(ids)} tasks POSTed by {CLIENTS} clients in {submit_seconds:.1f}s "
          f"({len(ids) / submit_seconds:.0f}/s), {done_during} already done when the clients stopped, all "
          f"done after {drained:.1f}s; {WORKERS} workers x 2 threads, runs per worker {dict(by_pid)}")
