"""Hard and soft time limits, and process isolation, on real SQLite and PostgreSQL.

A ``while True: pass`` child is killed at its limit and retried, a crashing child fails only its
attempt, the soft limit's cancel request reaches a cooperative task in a thread and in a child,
a thread past its hard limit is marked and fails when it returns, children are recycled.
"""

from __future__ import annotations

import os

import pytest
from flask import Flask

from tests.conftest import wait_until
from webapp.config import ConfigError
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, ValidationError
from webapp.tasks.consumer import Consumer

PROCESSORS = ["tests.processors", "tests.isolation_processors"]
TERMINAL = ("SUCCESS", "FAILURE", "CANCELLED")


def _app(make_app, backend: str, **config) -> Flask:
    # Spinning children take whole cores of a small machine: beats of 2 s keep a slow heartbeat
    # from passing for a dead worker, whose tasks recovery would take back mid-attempt.
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS, ASYNC_TASK_HEARTBEAT_INTERVAL=2, **config)


def _start(app: Flask, concurrency: int = 2) -> Consumer:
    consumer = Consumer(app, concurrency=concurrency, poll_interval=0.1).start()
    # The time limit counts from when the child gets the task: wait for the first child.
    wait_until(lambda: consumer.attempt_limits.children().pids, timeout=60, message="a child process")
    return consumer


def _submit(app: Flask, task_type: str, payload: dict | None = None) -> int:
    with app.app_context():
        task_id = AsyncTaskService().submit_task(task_type, payload or {}).id
        db.session.remove()
    return task_id


def _task(app: Flask, task_id: int) -> dict:
    with app.app_context():
        service = AsyncTaskService()
        task = service.require_task(task_id)
        events = [{"kind": e.kind, "at": e.at, "message": e.message or "", "traceback": e.traceback}
                  for e in service.events_for(task_id)]
        row = {"status": task.status, "error": task.error, "result": task.result, "events": events,
               "cancel_requested_at": task.cancel_requested_at}
        db.session.remove()
    return row


def _ended(app: Flask, task_id: int, timeout: float = 30) -> dict:
    return wait_until(lambda: (lambda t: t if t["status"] in TERMINAL else None)(_task(app, task_id)),
                      timeout=timeout, message=f"task {task_id} to end")


def _kinds(task: dict) -> list[str]:
    return [e["kind"] for e in task["events"]]


def test_a_spinning_child_is_killed_at_its_hard_limit_retried_and_the_worker_goes_on(make_app, backend):
    app = _app(make_app, backend)
    consumer = _start(app)
    spinning = _submit(app, "SPIN_FOREVER")
    task = _ended(app, spinning, timeout=40)
    assert task["status"] == "FAILURE" and task["error"] == "time limit of 2 s exceeded", task
    assert _kinds(task).count("CLAIMED") == 2 and "RETRY_SCHEDULED" in _kinds(task)  # retried by its policy
    claims = [e["at"] for e in task["events"] if e["kind"] == "CLAIMED"]
    endings = [e["at"] for e in task["events"] if e["kind"] in ("RETRY_SCHEDULED", "FAILED")]
    first_attempt = (endings[0] - claims[0]).total_seconds()
    assert 2 <= first_attempt <= 3.0, f"the first attempt took {first_attempt:.2f} s"
    # The worker is healthy: the same consumer runs isolated and thread tasks afterwards.
    after = [_submit(app, "WHERE_AM_I"), _submit(app, "NOOP")]
    assert [_ended(app, task_id)["status"] for task_id in after] == ["SUCCESS", "SUCCESS"]
    assert consumer.started and not consumer.stopping


@pytest.mark.parametrize(("how", "error"), [("segfault", "killed by SIGSEGV"), ("exit", "exit code 1"),
                                            ("sigkill", "killed by SIGKILL (the out-of-memory killer")])
def test_a_child_that_crashes_fails_only_its_attempt(make_app, backend, how, error):
    app = _app(make_app, backend)
    _start(app)
    crashing = _submit(app, "CRASH", {"how": how})
    task = _ended(app, crashing)
    assert task["status"] == "FAILURE" and error in task["error"], task
    assert task["error"].startswith("the child process running the task died")
    assert _kinds(task).count("CLAIMED") == 2  # the retry policy held (one retry)
    answered = _ended(app, _submit(app, "WHERE_AM_I"))
    assert answered["status"] == "SUCCESS" and answered["result"]["pid"] != os.getpid()


@pytest.mark.parametrize("task_type", ["COOPERATIVE", "COOPERATIVE_CHILD"])
def test_past_the_soft_limit_a_cooperative_task_is_asked_to_stop_and_ends_cancelled(make_app, backend,
                                                                                     task_type):
    app = _app(make_app, backend)
    _start(app)
    task = _ended(app, _submit(app, task_type), timeout=15)
    assert task["status"] == "CANCELLED" and task["error"] == "cancelled: soft time limit of 1 s passed", task
    soft = [e for e in task["events"] if e["kind"] == "SOFT_TIME_LIMIT"]
    assert len(soft) == 1 and "soft time limit of 1 s passed" in soft[0]["message"]
    stopped_after = (task["events"][-1]["at"] - soft[0]["at"]).total_seconds()
    assert stopped_after < 2.5, f"it stopped {stopped_after:.2f} s after the request"


def test_a_thread_past_its_hard_limit_is_marked_and_fails_when_it_returns(make_app, backend):
    app = _app(make_app, backend)
    Consumer(app, concurrency=2, poll_interval=0.1).start()
    stubborn = _submit(app, "STUBBORN_THREAD", {"seconds": 3})
    marked = wait_until(lambda: (lambda t: t if "TIME_LIMIT_EXCEEDED" in _kinds(t) else None)(_task(app, stubborn)),
                        timeout=10, message="the over-limit mark")
    assert marked["status"] == "PROCESSING"  # a thread cannot be stopped: it still runs, marked
    mark = next(e for e in marked["events"] if e["kind"] == "TIME_LIMIT_EXCEEDED")
    assert "time limit of 1 s exceeded" in mark["message"] and "isolation='process'" in mark["message"]
    task = _ended(app, stubborn)
    # What it returned late is discarded: the attempt failed by its time limit (no retries left).
    assert task["status"] == "FAILURE" and task["error"] == "time limit of 1 s exceeded"
    assert task["result"] is None and task["cancel_requested_at"] is None


def test_a_child_is_replaced_after_max_tasks_per_child(make_app):
    app = _app(make_app, "sqlite", ASYNC_TASK_MAX_TASKS_PER_CHILD=2)
    _start(app, concurrency=1)
    pids = []
    for _ in range(3):
        task = _ended(app, _submit(app, "WHERE_AM_I"))
        assert task["status"] == "SUCCESS", task
        pids.append(task["result"]["pid"])
    assert pids[0] == pids[1] != pids[2] and os.getpid() not in pids


def test_a_child_past_max_memory_per_child_is_replaced_after_its_task(make_app):
    app = _app(make_app, "sqlite", ASYNC_TASK_MAX_MEMORY_PER_CHILD=1)  # MiB: every child is above it
    _start(app, concurrency=1)
    pids = [_ended(app, _submit(app, "WHERE_AM_I"))["result"]["pid"] for _ in range(2)]
    assert pids[0] != pids[1]


def test_an_exception_in_the_child_keeps_its_message_and_traceback(make_app):
    app = _app(make_app, "sqlite")
    _start(app, concurrency=1)
    failing = _submit(app, "WHERE_AM_I", {"fail": True})
    task = wait_until(lambda: (lambda t: t if t["status"] == "RETRYING" else None)(_task(app, failing)),
                      timeout=30, message="the failed attempt")
    assert task["error"] == "ValueError: asked to fail"
    failed = next(e for e in task["events"] if e["kind"] == "RETRY_SCHEDULED")
    assert "asked to fail" in (failed["traceback"] or "") and "isolation_processors.py" in failed["traceback"]


def test_operators_override_the_time_limit_not_below_the_soft_limit(make_app):
    app = _app(make_app, "sqlite")
    with app.app_context():
        service = AsyncTaskService()
        service.set_limit_override("SPIN_FOREVER", {"time_limit": 3}, actor="ops")
        [spin] = service.limits_overview("SPIN_FOREVER")
        assert (spin["time_limit"], spin["declared"]["time_limit"], spin["override"]["time_limit"]) == (3, 2, 3)
        with pytest.raises(ValidationError) as refused:
            service.set_limit_override("COOPERATIVE", {"time_limit": 0.5}, actor="ops")
        assert refused.value.field == "time_limit" and "soft_time_limit" in str(refused.value)
        [cooperative] = service.limits_overview("COOPERATIVE")
        assert cooperative["override"] is None and cooperative["time_limit"] == 10
        db.session.remove()


@pytest.mark.parametrize("setting", ["ASYNC_TASK_MAX_TASKS_PER_CHILD", "ASYNC_TASK_MAX_MEMORY_PER_CHILD"])
def test_a_bad_child_setting_stops_start_up_naming_it(make_app, setting):
    with pytest.raises(ConfigError, match=setting):
        make_app("sqlite", **{setting: -1})


def test_stopping_the_worker_releases_an_isolated_task_and_kills_its_child(make_app):
    app = _app(make_app, "sqlite")
    consumer = _start(app, concurrency=1)
    spinning = _submit(app, "SPIN_FOREVER")
    wait_until(lambda: _task(app, spinning)["status"] == "PROCESSING", message="the task running")
    children = consumer.attempt_limits.children().pids
    consumer.stop(grace=0.3)
    task = _task(app, spinning)
    assert task["status"] == "PENDING" and "RELEASED" in _kinds(task), task  # given back, not failed
    assert "RETRY_SCHEDULED" not in _kinds(task)

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(lambda: all(gone(pid) for pid in children), timeout=10, message="the children to exit")
