"""``async def`` processors on both databases: they run on the worker's event loop, many at a time
without a thread each, with the thread processors' API (results, retries, progress, cancel,
masking, the attempt's writes) and the consumer's stop semantics (webapp/tasks/async_runner.py).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests import async_processors as procs
from tests import processors
from tests.conftest import wait_until
from tests.proc_utils import ProcessPool, worker_environment
from webapp.config import ConfigError, load_settings
from webapp.tasks import AsyncTaskService, TaskInfo, TaskProcessor, TaskResult
from webapp.tasks.consumer import Consumer
from webapp.tasks.errors import RegistryError
from webapp.tasks.limits import TaskLimits
from webapp.tasks.models import AuditEntry, Notification
from webapp.tasks.registry import ProcessorRegistry

PROCESSORS = ["tests.processors", "tests.async_processors"]


@pytest.fixture(autouse=True)
def clean_state():
    procs.reset()
    processors.RUN_LOG.clear()
    processors.RELEASE.clear()
    yield
    procs.RELEASE.set()
    processors.RELEASE.set()


@pytest.fixture
def async_app(make_app: Callable[..., Flask], backend: str) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def submit(app: Flask, task_type: str, payload: dict | None = None, count: int = 1) -> list[int]:
    with app.app_context():
        tasks = AsyncTaskService().submit_many([{"task_type": task_type, "payload": dict(payload or {})}
                                                for _ in range(count)])
        return [task.id for task in tasks]


def tasks_of(app: Flask, ids: list[int]) -> list:
    with app.app_context():
        service = AsyncTaskService()
        found = [service.get_task(i) for i in ids]
        service.session.expunge_all()
        return found


def statuses(app: Flask, ids: list[int]) -> list[str]:
    return [task.status for task in tasks_of(app, ids)]


def all_in(app: Flask, ids: list[int], status: str) -> bool:
    return all(s == status for s in statuses(app, ids))


def test_success_runs_on_the_event_loop_with_its_own_context(async_app):
    echo = submit(async_app, "ASYNC_ECHO", {"x": 1}, count=5)
    as_dict = submit(async_app, "ASYNC_DICT", {"n": 7})
    consumer = Consumer(async_app, concurrency=1).start()
    wait_until(lambda: all_in(async_app, echo + as_dict, "SUCCESS"), message="all SUCCESS")
    found = tasks_of(async_app, echo + as_dict)
    assert [task.result for task in found] == [{"echo": {"x": 1}}] * 5 + [{"n": 7}]
    assert {procs.SEEN[i]["thread"] for i in echo} == {"task-async-loop"}
    assert all(procs.SEEN[i]["context_task"] == i for i in echo)
    assert consumer.processed == 6
    with async_app.app_context():  # the worker row counts its async slots with its threads
        assert [w.concurrency for w in AsyncTaskService().workers()] == [1 + 100]


def test_failure_is_retried_by_the_policy(async_app):
    flaky = submit(async_app, "ASYNC_FLAKY", {"succeed_on": 3})[0]
    raises = submit(async_app, "ASYNC_RAISES")[0]
    Consumer(async_app, concurrency=1, poll_interval=0.05).start()
    wait_until(lambda: statuses(async_app, [flaky, raises]) == ["SUCCESS", "FAILURE"], timeout=15,
               message="flaky succeeds, raises fails")
    flaky_task, raises_task = tasks_of(async_app, [flaky, raises])
    assert (flaky_task.retry_count, flaky_task.result) == (2, {"attempt": 3})
    assert raises_task.attempts == 2
    assert raises_task.error == "ValueError: async boom 2"
    with async_app.app_context():
        kinds = [e.kind for e in AsyncTaskService().events_for(raises)]
    assert kinds.count("CLAIMED") == 2


def test_progress_of_concurrent_attempts_stays_their_own(async_app):
    ids = [submit(async_app, "ASYNC_STEPS", {"steps": 8, "step_seconds": 0.2, "tag": tag})[0]
           for tag in ("alpha", "beta")]
    Consumer(async_app, concurrency=1).start()

    def both_partial():
        found = tasks_of(async_app, ids)
        return all(t.status == "PROCESSING" and t.progress and 0 < t.progress < 1 for t in found) and found
    seen = wait_until(both_partial, timeout=10, message="partial progress of both")
    assert seen[0].progress_message.startswith("alpha step ")
    assert seen[1].progress_message.startswith("beta step ")
    wait_until(lambda: all_in(async_app, ids, "SUCCESS"), message="both done")
    assert [t.progress for t in tasks_of(async_app, ids)] == [1.0, 1.0]


def test_cooperative_cancel(async_app):
    reporting = submit(async_app, "ASYNC_STEPS", {"steps": 200, "step_seconds": 0.05})[0]
    polling = submit(async_app, "ASYNC_POLLS_CANCEL", {"seconds": 20})[0]
    Consumer(async_app, concurrency=1).start()
    wait_until(lambda: all_in(async_app, [reporting, polling], "PROCESSING"), message="both running")
    with async_app.app_context():
        AsyncTaskService().cancel_task(reporting, actor="ops")
        AsyncTaskService().cancel_task(polling, actor="ops")
    wait_until(lambda: all_in(async_app, [reporting, polling], "CANCELLED"), timeout=10,
               message="both cancelled")
    assert tasks_of(async_app, [polling])[0].error == "stopped at the operator's request"


def test_fifty_sleeping_tasks_run_at_once_on_few_threads(async_app):
    ids = submit(async_app, "ASYNC_SLEEP", {"seconds": 0.5}, count=50)
    threads_before = threading.active_count()
    consumer = Consumer(async_app, concurrency=1).start()
    wait_until(lambda: all_in(async_app, ids, "SUCCESS"), timeout=30, message="all 50 slept")
    found = tasks_of(async_app, ids)
    window = (max(t.finished_at for t in found) - min(t.started_at for t in found)).total_seconds()
    # One at a time they take 25 s; on the loop about one sleep plus claims and finishes.
    assert window < 5, window
    assert procs.PEAK[0] >= 40, procs.PEAK[0]
    assert {procs.SEEN[i]["thread"] for i in ids} == {"task-async-loop"}
    # The consumer's own threads (claim, finisher, loop, scheduler, notifier, listener): not one per task.
    assert threading.active_count() - threads_before < 25
    assert consumer.processed == 50


def test_async_concurrency_setting_caps_the_attempts_in_flight(make_app, backend):
    app = make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS, ASYNC_TASK_ASYNC_CONCURRENCY=5)
    ids = submit(app, "ASYNC_SLEEP", {"seconds": 0.2}, count=20)
    Consumer(app, concurrency=1, batch_size=50).start()
    wait_until(lambda: all_in(app, ids, "SUCCESS"), timeout=20, message="all done")
    assert procs.PEAK[0] == 5


def test_mixed_with_thread_processors_in_one_consumer(async_app):
    threaded = submit(async_app, "SLEEP", {"seconds": 1.5}, count=2)
    asynchronous = submit(async_app, "ASYNC_SLEEP", {"seconds": 0.2}, count=20)
    Consumer(async_app, concurrency=2).start()
    wait_until(lambda: all_in(async_app, asynchronous + threaded, "SUCCESS"), timeout=20, message="all done")
    # The async tasks did not wait for the two busy worker threads: all ended before either thread task.
    async_tasks, thread_tasks = tasks_of(async_app, asynchronous), tasks_of(async_app, threaded)
    assert max(t.finished_at for t in async_tasks) < min(t.finished_at for t in thread_tasks)
    assert sorted(task_id for task_id, _ in processors.RUN_LOG) == threaded
    assert {procs.SEEN[i]["thread"] for i in asynchronous} == {"task-async-loop"}


def test_graceful_stop_lets_running_async_tasks_finish(async_app):
    ids = submit(async_app, "ASYNC_SLEEP", {"seconds": 0.5}, count=10)
    consumer = Consumer(async_app, concurrency=1, batch_size=50).start()
    wait_until(lambda: len(procs.SEEN) == 10, message="all started")
    assert consumer.stop(grace=5) == []
    assert all_in(async_app, ids, "SUCCESS")


def test_graceful_stop_gives_back_async_tasks_past_the_grace(async_app):
    blocked = submit(async_app, "ASYNC_BLOCK", {"timeout": 10})[0]
    consumer = Consumer(async_app, concurrency=1).start()
    wait_until(lambda: blocked in procs.SEEN, message="task started")
    released = consumer.stop(grace=0.3)
    assert released == [blocked]
    assert procs.SEEN[blocked].get("cancelled") is True
    assert statuses(async_app, [blocked]) == ["PENDING"]
    with async_app.app_context():
        service = AsyncTaskService()
        assert "RELEASED" in [e.kind for e in service.events_for(blocked)]
        assert service.workers() == []


def _audit_rows(app: Flask, action: str) -> int:
    with app.app_context():
        return AsyncTaskService().session.scalar(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == action)) or 0


def test_the_attempts_writes_commit_with_its_outcome(async_app):
    kept = submit(async_app, "ASYNC_WRITES", {"fail": False})[0]
    dropped = submit(async_app, "ASYNC_WRITES", {"fail": True})[0]
    Consumer(async_app, concurrency=1).start()
    wait_until(lambda: statuses(async_app, [kept, dropped]) == ["SUCCESS", "FAILURE"], message="both ended")
    assert _audit_rows(async_app, f"async-write-{kept}") == 1
    assert _audit_rows(async_app, f"async-write-{dropped}") == 0


def test_an_async_task_notifies_its_creator_like_any_task(async_app):
    with async_app.app_context():
        ok = AsyncTaskService().submit_many([{"task_type": "ASYNC_ECHO", "payload": {},
                                              "created_by": "ops@example.com"}])[0].id
        failed = AsyncTaskService().submit_many([{"task_type": "ASYNC_WRITES", "payload": {"fail": True},
                                                  "created_by": "ops@example.com"}])[0].id
    Consumer(async_app, concurrency=1).start()
    wait_until(lambda: statuses(async_app, [ok, failed]) == ["SUCCESS", "FAILURE"], message="both ended")
    with async_app.app_context():
        rows = AsyncTaskService().session.execute(
            select(Notification.task_id, Notification.type, Notification.recipient)
            .where(Notification.task_id.in_([ok, failed])).order_by(Notification.task_id)).all()
    assert [tuple(row) for row in rows] == [(ok, "EMAIL", "ops@example.com"), (failed, "EMAIL", "ops@example.com")]


def test_secrets_are_masked_in_the_attempts_log(async_app, caplog):
    caplog.set_level(logging.WARNING, logger="tests.async_processors")
    task_id = submit(async_app, "ASYNC_SECRET", {"password": "hunter2-async"})[0]
    Consumer(async_app, concurrency=1).start()
    wait_until(lambda: statuses(async_app, [task_id]) == ["SUCCESS"], message="done")
    lines = [r for r in caplog.records if r.name == "tests.async_processors"]
    assert lines and all("hunter2-async" not in r.getMessage() for r in lines)
    assert lines[0].task_id == task_id


def test_the_hard_time_limit_stops_an_async_attempt(async_app):
    slow = submit(async_app, "ASYNC_SLOW")[0]
    own = submit(async_app, "ASYNC_SLOW", {"own_timeout": True})[0]
    Consumer(async_app, concurrency=1).start()
    wait_until(lambda: statuses(async_app, [slow, own]) == ["FAILURE", "FAILURE"], timeout=20,
               message="both failed")
    slow_task, own_task = tasks_of(async_app, [slow, own])
    assert (slow_task.finished_at - slow_task.started_at).total_seconds() < 5  # not its 30 s sleep
    assert slow_task.error == "time limit of 0.5 s exceeded"
    assert procs.SEEN[slow]["stopped"] is True
    assert own_task.error.startswith("TimeoutError")  # the processor's own timeout is not the limit


def test_the_soft_time_limit_asks_an_async_attempt_to_stop(async_app):
    task_id = submit(async_app, "ASYNC_SOFT")[0]
    Consumer(async_app, concurrency=1).start()
    wait_until(lambda: statuses(async_app, [task_id]) == ["CANCELLED"], timeout=15, message="stopped")
    task = tasks_of(async_app, [task_id])[0]
    assert task.error == "cancelled: soft time limit of 0.5 s passed"
    assert (task.finished_at - task.started_at).total_seconds() < 5  # not its 20 s
    with async_app.app_context():
        kinds = [e.kind for e in AsyncTaskService().events_for(task_id)]
    assert kinds.count("SOFT_TIME_LIMIT") == 1


# -- registration and settings (no database) ----------------------------------------------------


def test_registry_knows_async_processors_and_refuses_async_hooks():
    registry = ProcessorRegistry()
    registry.register(procs.AsyncEchoProcessor())
    registry.register(processors.NoopProcessor())
    assert registry.is_async("ASYNC_ECHO") and not registry.is_async("NOOP")

    class AsyncHook(TaskProcessor):
        task_type = "ASYNC_HOOK"

        async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
            return TaskResult.success()

        async def get_priority(self, payload: dict) -> int:  # type: ignore[override]
            return 1

    with pytest.raises(RegistryError, match=r"AsyncHook.get_priority must be a plain 'def'"):
        registry.register(AsyncHook())

    class Yields(TaskProcessor):
        task_type = "ASYNC_YIELDS"

        async def process(self, task: TaskInfo, payload: dict):  # type: ignore[override]
            yield TaskResult.success()

    with pytest.raises(RegistryError, match=r"Yields.process is an async generator"):
        registry.register(Yields())

    class Isolated(TaskProcessor):
        task_type = "ASYNC_ISOLATED"

        def get_limits(self) -> TaskLimits:
            return TaskLimits(isolation="process")

        async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
            return TaskResult.success()

    with pytest.raises(RegistryError, match=r"ASYNC_ISOLATED: get_limits\(\): isolation='process' needs a plain"):
        registry.register(Isolated())
    assert "ASYNC_ISOLATED" not in registry


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_async_concurrency_setting_is_checked_at_start(tmp_path, value):
    with pytest.raises(ConfigError, match=r"^ASYNC_TASK_ASYNC_CONCURRENCY: invalid value"):
        load_settings(str(tmp_path), environ={"ASYNC_TASK_ASYNC_CONCURRENCY": value})


def test_async_concurrency_default(tmp_path):
    assert load_settings(str(tmp_path), environ={})["ASYNC_TASK_ASYNC_CONCURRENCY"] == 100


# -- a real worker process ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_worker_process_runs_async_tasks_and_gives_back_what_outlives_the_grace(
        make_app, pg_url, redis_url, tmp_path, pool: ProcessPool):
    app = make_app("postgres", redis=True, ASYNC_TASK_PROCESSORS=PROCESSORS)
    env = worker_environment(pg_url, redis_url=redis_url, lock_prefix=app.config["ASYNC_TASK_REDIS_LOCK_PREFIX"],
                             run_log=tmp_path / "runs.log", tmp_path=tmp_path,
                             ASYNC_TASK_PROCESSORS=",".join(PROCESSORS), ASYNC_TASK_SHUTDOWN_GRACE=1)
    worker = pool.start_worker("async", env, concurrency=2)
    slept = submit(app, "ASYNC_SLEEP", {"seconds": 0.5}, count=40)
    threaded = submit(app, "SLEEP", {"seconds": 0.2}, count=4)
    wait_until(lambda: all_in(app, slept + threaded, "SUCCESS"), timeout=60, message="all done")
    blocked = submit(app, "ASYNC_BLOCK", {"timeout": 60})[0]
    wait_until(lambda: statuses(app, [blocked]) == ["PROCESSING"], timeout=20, message="blocked runs")
    worker.send(signal.SIGTERM)
    assert worker.wait_exit(timeout=30) == 0
    assert statuses(app, [blocked]) == ["PENDING"]
    assert "released 1 task(s)" in worker.log_text()
