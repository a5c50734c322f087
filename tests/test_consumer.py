"""The in-process consumer on real databases: retries at their times, priorities, drain, stop."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select, text

from tests import processors
from tests.conftest import wait_until
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.consumer import Consumer
from webapp.tasks.models import TaskEvent

# How late a retry may start: the poll interval (0.05 s) plus what a loaded machine adds.
LATE_SLACK = 1.0


@pytest.fixture(autouse=True)
def clear_run_log():
    processors.RUN_LOG.clear()
    processors.RELEASE.clear()
    yield
    processors.RELEASE.set()


def statuses(app, ids):
    with app.app_context():
        service = AsyncTaskService()
        return [service.get_task(i).status for i in ids]


def all_status(app, ids, status):
    return all(s == status for s in statuses(app, ids))


def claim_times(app, task_id):
    with app.app_context():
        rows = db.session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id,
                                                         TaskEvent.kind == "CLAIMED")
                                  .order_by(TaskEvent.id)).all()
        return [row.at for row in rows]


def test_processes_tasks_and_stores_results(app):
    with app.app_context():
        ids = [AsyncTaskService().submit_task("NOOP", {"i": i}).id for i in range(5)]
    Consumer(app, concurrency=2).start()
    wait_until(lambda: all_status(app, ids, "SUCCESS"), message="all SUCCESS")
    with app.app_context():
        assert AsyncTaskService().get_task(ids[3]).result == {"echo": {"i": 3}}
    assert sorted(task_id for task_id, _ in processors.RUN_LOG) == ids


def test_fixed_retries_happen_at_their_interval(app):
    with app.app_context():
        task_id = AsyncTaskService().submit_task("FLAKY", {"succeed_on": 3}).id
    Consumer(app, concurrency=1, poll_interval=0.05).start()
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], message="FLAKY success")
    times = claim_times(app, task_id)
    assert len(times) == 3
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    # Never early; late by at most a poll plus scheduling delay on a loaded 2-core machine.
    assert all(0.3 <= gap <= 0.3 + LATE_SLACK for gap in gaps), gaps
    with app.app_context():
        task = AsyncTaskService().get_task(task_id)
        assert (task.retry_count, task.result) == (2, {"attempt": 3})


def test_exponential_retries_double(app):
    with app.app_context():
        task_id = AsyncTaskService().submit_task("EXPO_FAIL", {}).id
    Consumer(app, concurrency=1, poll_interval=0.05).start()
    wait_until(lambda: statuses(app, [task_id]) == ["FAILURE"], timeout=15, message="EXPO_FAIL failure")
    times = claim_times(app, task_id)
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:], strict=False)]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, [0.4, 0.8, 1.6], strict=True):
        assert expected <= gap <= expected + LATE_SLACK, gaps
    with app.app_context():
        service = AsyncTaskService()
        task = service.get_task(task_id)
        assert task.error.startswith("RuntimeError: boom 4")
        failed = [e for e in service.events_for(task_id) if e.kind in ("RETRY_SCHEDULED", "FAILED")]
        assert all("Traceback" in e.traceback for e in failed)


def test_higher_priority_runs_first(app):
    with app.app_context():
        service = AsyncTaskService()
        low = service.submit_task("NOOP", {}, priority=0).id
        high = service.submit_task("NOOP", {}, priority=5).id
        mid = service.submit_task("NOOP", {}, priority=2).id
    Consumer(app, concurrency=1, batch_size=1).start()
    wait_until(lambda: all_status(app, [low, high, mid], "SUCCESS"), message="all SUCCESS")
    assert [task_id for task_id, _ in processors.RUN_LOG] == [high, mid, low]


def test_processor_writes_roll_back_with_a_failed_attempt(app):
    with app.app_context():
        service = AsyncTaskService()
        failing = service.submit_task("WRITES_THEN_FAILS", {"fail": True}).id
        passing = service.submit_task("WRITES_THEN_FAILS", {"fail": False}).id
    Consumer(app, concurrency=1).start()
    wait_until(lambda: statuses(app, [failing, passing]) == ["FAILURE", "SUCCESS"], message="outcomes")
    with app.app_context():
        actions = set(db.session.scalars(text("SELECT action FROM audit_log")).all())
    assert f"processor-write-{passing}" in actions
    assert f"processor-write-{failing}" not in actions


def test_submit_wakes_an_idle_consumer(app):
    Consumer(app, concurrency=1, poll_interval=30).start()
    time.sleep(0.3)  # the first poll has come and gone
    with app.app_context():
        started = time.monotonic()
        task_id = AsyncTaskService().submit_task("NOOP", {}).id
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], timeout=5, message="woken")
    assert time.monotonic() - started < 2


def test_drains_without_waiting_for_the_next_poll(app):
    with app.app_context():
        ids = [t.id for t in AsyncTaskService().submit_many(
            [{"task_type": "NOOP", "payload": {}} for _ in range(60)])]
    started = time.monotonic()
    Consumer(app, concurrency=2, batch_size=5, poll_interval=30).start()
    wait_until(lambda: all_status(app, ids, "SUCCESS"), timeout=20, message="drained")
    assert time.monotonic() - started < 15  # 12 full claims; waiting for polls would take 6 minutes
    assert len(processors.RUN_LOG) == 60


def test_claims_no_more_than_free_threads(app):
    with app.app_context():
        ids = [AsyncTaskService().submit_task("BLOCK", {"timeout": 10}).id for _ in range(5)]
    Consumer(app, concurrency=2, batch_size=10).start()
    wait_until(lambda: len(processors.RUN_LOG) == 2, message="two running")
    time.sleep(0.5)
    assert sorted(statuses(app, ids)) == ["PENDING"] * 3 + ["PROCESSING"] * 2
    processors.RELEASE.set()
    wait_until(lambda: all_status(app, ids, "SUCCESS"), message="all done")


def test_graceful_stop_releases_what_does_not_finish(app):
    with app.app_context():
        task_id = AsyncTaskService().submit_task("BLOCK", {"timeout": 10}).id
    consumer = Consumer(app, concurrency=1).start()
    wait_until(lambda: processors.RUN_LOG, message="task started")
    released = consumer.stop(grace=0.3)
    assert released == [task_id]
    assert statuses(app, [task_id]) == ["PENDING"]
    processors.RELEASE.set()
    time.sleep(0.3)  # the abandoned thread finishes; its late result must be refused
    with app.app_context():
        service = AsyncTaskService()
        assert service.get_task(task_id).status == "PENDING"
        kinds = [e.kind for e in service.events_for(task_id)]
        assert "RELEASED" in kinds and "LATE_RESULT_REFUSED" in kinds
        assert service.workers() == []


def test_graceful_stop_waits_for_running_tasks(app):
    with app.app_context():
        task_id = AsyncTaskService().submit_task("SLEEP", {"seconds": 0.5}).id
    consumer = Consumer(app, concurrency=1).start()
    wait_until(lambda: processors.RUN_LOG, message="task started")
    assert consumer.stop(grace=5) == []
    assert statuses(app, [task_id]) == ["SUCCESS"]


@pytest.mark.redis
def test_redis_locks_are_taken_and_released(make_app, backend):
    app = make_app(backend, redis=True)
    locks = app.extensions["async_task"].locks
    with app.app_context():
        ids = [AsyncTaskService().submit_task("SLEEP", {"seconds": 0.4}).id for _ in range(2)]
    Consumer(app, concurrency=2).start()
    wait_until(lambda: all(locks.client.exists(locks.key(i)) for i in ids), message="locks held")
    wait_until(lambda: all_status(app, ids, "SUCCESS"), message="done")
    wait_until(lambda: not any(locks.client.exists(locks.key(i)) for i in ids), message="locks released")


@pytest.mark.redis
def test_a_task_whose_redis_lock_is_held_elsewhere_is_given_back(make_app, backend):
    app = make_app(backend, redis=True)
    locks = app.extensions["async_task"].locks
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}).id
    locks.client.set(locks.key(task_id), "someone-else", px=1500)
    Consumer(app, concurrency=1, poll_interval=0.1).start()
    time.sleep(0.5)
    assert processors.RUN_LOG == []
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], timeout=10, message="runs after expiry")
    assert len(processors.RUN_LOG) == 1


def test_unreachable_redis_does_not_stop_processing(make_app, backend, caplog):
    app = make_app(backend, REDIS_URL="redis://127.0.0.1:1/0")
    with app.app_context():
        ids = [AsyncTaskService().submit_task("NOOP", {}).id for _ in range(3)]
    consumer = Consumer(app, concurrency=1).start()
    wait_until(lambda: all_status(app, ids, "SUCCESS"), message="processed without Redis")
    assert consumer.redis_ok is False
    assert app.extensions["async_task"].redis_ok is False
    assert "REDIS UNAVAILABLE" in caplog.text


def test_worker_row_heartbeats(app):
    consumer = Consumer(app, concurrency=2).start()
    with app.app_context():
        first = AsyncTaskService().workers()[0].last_heartbeat_at
    time.sleep(1.2)
    with app.app_context():
        db.session.expire_all()
        workers = AsyncTaskService().workers()
        assert [w.id for w in workers] == [consumer.worker_id]
        assert workers[0].last_heartbeat_at > first
        assert workers[0].concurrency == 2
        assert db.session.scalar(select(func.count()).select_from(TaskEvent)) == 0


def test_progress_is_visible_while_the_task_runs(app):
    with app.app_context():
        task_id = AsyncTaskService().submit_task("STEPS", {"steps": 6, "step_seconds": 0.25}).id
    Consumer(app, concurrency=1).start()

    def progress():
        with app.app_context():
            task = AsyncTaskService().get_task(task_id)
            return task.status == "PROCESSING" and task.progress and 0 < task.progress < 1 and task
    seen = wait_until(progress, timeout=10, message="partial progress")
    assert seen.progress_message.startswith("step ")
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], message="done")


def test_a_running_task_stops_when_cancelled(app):
    with app.app_context():
        service = AsyncTaskService()
        reporting = service.submit_task("STEPS", {"steps": 100, "step_seconds": 0.05}).id
        polling = service.submit_task("POLLS_CANCEL", {"seconds": 20}).id
    Consumer(app, concurrency=2).start()
    wait_until(lambda: statuses(app, [reporting, polling]) == ["PROCESSING"] * 2, message="both running")
    with app.app_context():
        AsyncTaskService().cancel_task(reporting, actor="ops")
        AsyncTaskService().cancel_task(polling, actor="ops")
    wait_until(lambda: statuses(app, [reporting, polling]) == ["CANCELLED"] * 2, timeout=10,
               message="both cancelled")
    with app.app_context():
        assert AsyncTaskService().get_task(polling).error == "stopped at the operator's request"


def test_a_task_that_ignores_cancel_finishes_and_the_request_is_too_late(app):
    with app.app_context():
        task_id = AsyncTaskService().submit_task("IGNORES_CANCEL", {"seconds": 1.0}).id
    Consumer(app, concurrency=1).start()
    wait_until(lambda: statuses(app, [task_id]) == ["PROCESSING"], message="running")
    with app.app_context():
        AsyncTaskService().cancel_task(task_id)
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], message="finished anyway")
    with app.app_context():
        assert "CANCEL_TOO_LATE" in [e.kind for e in AsyncTaskService().events_for(task_id)]


def test_pause_stops_claims_and_resume_restarts_them(app):
    with app.app_context():
        AsyncTaskService().pause_task_type("NOOP", actor="ops")
        task_id = AsyncTaskService().submit_task("NOOP", {}).id
    Consumer(app, concurrency=1, poll_interval=0.1).start()
    time.sleep(1.5)
    assert statuses(app, [task_id]) == ["PENDING"]
    with app.app_context():
        AsyncTaskService().resume_task_type("NOOP", actor="ops")
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], timeout=5, message="resumed")


def test_a_submit_from_another_connection_wakes_an_idle_consumer(make_app, backend, tmp_path):
    """Another process's submit (PostgreSQL NOTIFY, SQLite data_version) starts the task at once."""
    from tests.conftest import base_config
    from webapp import create_app

    app = make_app(backend)
    # A second app on the same database: its own engine and connections, like another process.
    other_process = create_app(base_config(SQLALCHEMY_DATABASE_URI=app.config["SQLALCHEMY_DATABASE_URI"]))
    Consumer(app, concurrency=1, poll_interval=30).start()
    time.sleep(0.5)  # the first poll has come and gone
    with other_process.app_context():
        started = time.monotonic()
        task_id = AsyncTaskService().submit_task("NOOP", {}).id
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], timeout=5, message="woken")
    assert time.monotonic() - started < 2
    with other_process.app_context():
        db.engine.dispose()


def test_direct_connections_carry_claims_and_successes(make_app):
    """PostgreSQL consumers claim and finish through their own autocommit connections."""
    app = make_app("postgres")
    with app.app_context():
        ids = [t.id for t in AsyncTaskService().submit_many([{"task_type": "NOOP", "payload": {}}] * 30)]
    consumer = Consumer(app, concurrency=2, batch_size=5, prefetch=5).start()
    assert consumer._claim_direct is not None and consumer._finish_direct is not None
    wait_until(lambda: all_status(app, ids, "SUCCESS"), message="drained")
    assert consumer._claim_direct._connection is not None  # used, and kept open
    # Claims skip the WAL-flush wait; outcomes keep it (see docs/architecture.md).
    assert consumer._claim_direct.execute("SHOW synchronous_commit", {})[0][0] == "off"
    assert consumer._finish_direct.execute("SHOW synchronous_commit", {})[0][0] == "on"
    with app.app_context():
        service = AsyncTaskService()
        assert [e.kind for e in service.events_for(ids[0])] == ["SUBMITTED", "CLAIMED", "SUCCEEDED"]
    consumer.stop()
    assert consumer._claim_direct._connection is None


def test_direct_connections_can_be_switched_off(make_app):
    app = make_app("postgres", ASYNC_TASK_DIRECT_CONNECTIONS=False)
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}).id
    consumer = Consumer(app, concurrency=1).start()
    assert consumer._claim_direct is None
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], message="done")


def test_a_worker_gives_back_attempts_it_lost_track_of(app):
    """A claim whose answer never arrived: the task is PROCESSING under a live worker that does
    not know it; the worker's heartbeat releases it and it runs once."""
    consumer = Consumer(app, concurrency=1, poll_interval=30)
    with app.app_context():
        service = AsyncTaskService()
        task_id = service.submit_task("NOOP", {}).id
        # Claimed in this worker's name behind its back, as if the claim's reply had been lost.
        lost = service.claim_due_tasks(consumer.worker_id, 1)
        assert [t.id for t in lost] == [task_id]
    consumer.start()
    wait_until(lambda: statuses(app, [task_id]) == ["SUCCESS"], timeout=10, message="released and run")
    with app.app_context():
        kinds = [e.kind for e in AsyncTaskService().events_for(task_id)]
    assert kinds.count("RELEASED") == 1 and kinds[-1] == "SUCCEEDED"
    assert len(processors.RUN_LOG) == 1
