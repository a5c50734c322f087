"""AsyncTaskService on real SQLite and PostgreSQL: submit, transitions, claims, fencing, recovery."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select, text, update

from tests.processors import OrderPayload
from webapp.extensions import db
from webapp.tasks import (
    AsyncTaskService,
    InvalidPayload,
    InvalidTransition,
    TaskNotFound,
    TaskResult,
    UnknownTaskType,
    ValidationError,
)
from webapp.tasks.errors import IdempotencyConflict
from webapp.tasks.models import AsyncTask, TaskEvent, Worker
from webapp.tasks.service import TaskFilter

WORKER = "test-worker"


def task_count() -> int:
    return db.session.scalar(select(func.count()).select_from(AsyncTask))


def kinds(service: AsyncTaskService, task_id: int) -> list[str]:
    return [event.kind for event in service.events_for(task_id)]


def claim_one(service: AsyncTaskService, worker: str = WORKER):
    claimed = service.claim_due_tasks(worker, 1)
    assert len(claimed) == 1
    return claimed[0]


# -- submit -----------------------------------------------------------------------------------


def test_submit_creates_a_pending_task_with_its_retry_settings(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("FLAKY", {"succeed_on": 2}, created_by="a@example.com")
    assert task.id > 0 and isinstance(task.id, int)
    assert task.status == "PENDING"
    assert task.priority == 0
    assert task.retry_count == 0
    assert (task.max_retry_count, task.retry_strategy, task.retry_interval) == (3, "FIXED", 0.3)
    assert task.created_by == "a@example.com"
    assert task.next_run_at <= datetime.now(UTC)
    assert task.created_at.tzinfo is not None
    assert kinds(service, task.id) == ["SUBMITTED"]


def test_priority_comes_from_the_argument_then_the_processor_then_zero(app_ctx):
    service = AsyncTaskService()
    assert service.submit_task("ORDER", {"customer": "c", "amount": 1, "rush": True}).priority == 10
    assert service.submit_task("ORDER", {"customer": "c", "amount": 1, "rush": True}, priority=3).priority == 3
    assert service.submit_task("ORDER", {"customer": "c", "amount": 1}).priority == 0
    assert service.submit_task("NOOP", {}).priority == 0


def test_payload_may_be_an_instance_of_the_payload_type(app_ctx):
    task = AsyncTaskService().submit_task("ORDER", OrderPayload(customer="c", amount=5, tags=["x"]))
    assert task.payload == {"customer": "c", "amount": 5, "tags": ["x"], "note": None, "rush": False}


@pytest.mark.parametrize("args,error,field", [
    (("NOPE", {}), UnknownTaskType, "task_type"),
    (("", {}), ValidationError, "task_type"),
    ((None, {}), ValidationError, "task_type"),
    (("NOOP", [1, 2]), InvalidPayload, "payload"),
    (("NOOP", "text"), InvalidPayload, "payload"),
    (("NOOP", {"when": datetime.now()}), InvalidPayload, "payload"),
    (("NOOP", {"x": float("nan")}), InvalidPayload, "payload"),
    (("NOOP", {"x": "a\x00b"}), InvalidPayload, "payload"),
    (("NOOP", {"x": ["\ud800"]}), InvalidPayload, "payload"),
    (("NOOP", {}, None, "bob\x00"), ValidationError, "created_by"),
    (("ORDER", {"customer": "c"}), InvalidPayload, "payload.amount"),
    (("ORDER", {"customer": "c", "amount": "many"}), InvalidPayload, "payload.amount"),
    (("NOOP", {}, "high"), ValidationError, "priority"),
    (("NOOP", {}, 1.5), ValidationError, "priority"),
    (("NOOP", {}, True), ValidationError, "priority"),
    (("NOOP", {}, 2**40), ValidationError, "priority"),
    (("NOOP", {}, None, 42), ValidationError, "created_by"),
    (("NOOP", {}, None, None, "tomorrow"), ValidationError, "run_at"),
    (("NOOP", {}, None, None, datetime(2030, 1, 1)), ValidationError, "run_at"),
    (("NOOP", {}, None, None, 12345), ValidationError, "run_at"),
])
def test_bad_input_is_refused_and_nothing_is_written(app_ctx, args, error, field):
    service = AsyncTaskService()
    before = task_count()
    with pytest.raises(error) as caught:
        service.submit_task(*args)
    assert caught.value.field == field
    assert caught.value.message
    db.session.rollback()
    assert task_count() == before


def test_run_at_accepts_aware_datetimes_and_iso_strings(app_ctx):
    service = AsyncTaskService()
    later = datetime.now(UTC) + timedelta(hours=1)
    assert service.submit_task("NOOP", {}, run_at=later).next_run_at == later
    task = service.submit_task("NOOP", {}, run_at="2031-02-03T04:05:06Z")
    assert task.next_run_at == datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_idempotency_key_returns_the_existing_task(app_ctx):
    service = AsyncTaskService()
    first = service.submit("NOOP", {"n": 1}, idempotency_key="k1", idempotency_scope="client-a")
    again = service.submit("NOOP", {"n": 1}, idempotency_key="k1", idempotency_scope="client-a")
    other = service.submit("NOOP", {"n": 3}, idempotency_key="k1", idempotency_scope="client-b")
    with pytest.raises(IdempotencyConflict, match="'k1'"):  # issue 14: another payload is refused
        service.submit("NOOP", {"n": 2}, idempotency_key="k1", idempotency_scope="client-a")
    assert first.created and not again.created and other.created
    assert again.task.id == first.task.id
    assert other.task.id != first.task.id


def test_submit_many_is_all_or_nothing(app_ctx):
    service = AsyncTaskService()
    tasks = service.submit_many([{"task_type": "NOOP", "payload": {"i": i}, "priority": i} for i in range(5)])
    assert [t.payload["i"] for t in tasks] == list(range(5))
    for i, task in enumerate(tasks):
        stored = service.get_task(task.id)
        assert (stored.payload, stored.priority, stored.status) == ({"i": i}, i, "PENDING")
        assert kinds(service, task.id) == ["SUBMITTED"]
    before = task_count()
    with pytest.raises(InvalidPayload) as caught:
        service.submit_many([{"task_type": "NOOP", "payload": {}}, {"task_type": "NOOP", "payload": 3}])
    assert caught.value.field == "tasks[1].payload"
    db.session.rollback()
    assert task_count() == before


# -- reading ----------------------------------------------------------------------------------


def test_get_task_and_unknown_ids(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("NOOP", {})
    assert service.get_task(task.id).id == task.id
    assert service.get_task(str(task.id)).id == task.id
    assert service.get_task(999_999) is None
    with pytest.raises(ValidationError):
        service.get_task("abc")
    with pytest.raises(ValidationError):
        service.get_task(-1)


def test_get_tasks_by_type_filters_by_status(app_ctx):
    service = AsyncTaskService()
    ids = [service.submit_task("NOOP", {}).id for _ in range(3)]
    service.submit_task("SLEEP", {})
    service.cancel_task(ids[0])
    assert {t.id for t in service.get_tasks_by_type("NOOP")} == set(ids)
    assert [t.id for t in service.get_tasks_by_type("NOOP", "CANCELLED")] == [ids[0]]
    with pytest.raises(ValidationError):
        service.get_tasks_by_type("NOOP", "DONE")


def test_keyset_pages_cover_everything_once(app_ctx):
    service = AsyncTaskService()
    ids = [service.submit_task("NOOP", {}).id for _ in range(7)]
    seen, cursor = [], None
    while True:
        page = service.list_tasks(limit=3, cursor=cursor)
        seen += [t.id for t in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(ids, reverse=True)


# -- operator transitions ---------------------------------------------------------------------


def test_cancel_pending_and_retrying(app_ctx):
    service = AsyncTaskService()
    pending = service.submit_task("NOOP", {})
    cancelled = service.cancel_task(pending.id, actor="alice")
    assert cancelled.status == "CANCELLED" and cancelled.finished_at is not None
    assert kinds(service, pending.id) == ["SUBMITTED", "CANCELLED"]

    flaky = service.submit_task("FLAKY", {})
    claimed = claim_one(service)
    assert service.finish_task(claimed, TaskResult.failure("x")).status == "RETRYING"
    assert service.cancel_task(flaky.id).status == "CANCELLED"


@pytest.mark.parametrize("finish", ["SUCCESS", "FAILURE", "CANCELLED"])
def test_cancel_is_refused_for_finished_tasks(app_ctx, finish):
    service = AsyncTaskService()
    task = service.submit_task("NOOP", {})
    if finish != "CANCELLED":
        claimed = claim_one(service)
        result = TaskResult.success() if finish == "SUCCESS" else TaskResult.failure("x", retryable=False)
        service.finish_task(claimed, result)
    else:
        service.cancel_task(task.id)
    with pytest.raises(InvalidTransition, match=f"it is {finish}") as caught:
        service.cancel_task(task.id)
    assert caught.value.current_status == finish
    assert service.get_task(task.id).status == finish


def test_cancel_and_retry_of_a_missing_task(app_ctx):
    service = AsyncTaskService()
    with pytest.raises(TaskNotFound):
        service.cancel_task(424242)
    with pytest.raises(TaskNotFound):
        service.retry_task(424242)


def test_manual_retry_only_from_failure(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("FATAL", {})
    with pytest.raises(InvalidTransition, match="only FAILURE"):
        service.retry_task(task.id)
    claimed = claim_one(service)
    assert service.finish_task(claimed, TaskResult.failure("no", retryable=False)).status == "FAILURE"
    retried = service.retry_task(task.id, actor="bob")
    assert retried.status == "PENDING" and retried.retry_count == 0 and retried.finished_at is None
    assert kinds(service, task.id)[-1] == "RETRIED"


# -- claims and finishing ---------------------------------------------------------------------


def test_claims_follow_priority_then_fifo(app_ctx):
    service = AsyncTaskService()
    low = service.submit_task("NOOP", {"n": "low"}, priority=1)
    first_mid = service.submit_task("NOOP", {"n": "mid1"}, priority=5)
    high = service.submit_task("NOOP", {"n": "high"}, priority=9)
    second_mid = service.submit_task("NOOP", {"n": "mid2"}, priority=5)
    order = [service.claim_due_tasks(WORKER, 1)[0].id for _ in range(4)]
    assert order == [high.id, first_mid.id, second_mid.id, low.id]


def test_a_batch_claim_is_ordered_and_limited(app_ctx):
    service = AsyncTaskService()
    ids = [service.submit_task("NOOP", {}, priority=p).id for p in (0, 3, 1, 3)]
    claimed = service.claim_due_tasks(WORKER, 3)
    assert [t.id for t in claimed] == [ids[1], ids[3], ids[2]]
    assert all(t.claim_token for t in claimed)
    assert service.get_task(ids[0]).status == "PENDING"


def test_delayed_tasks_are_not_claimed_early(app_ctx):
    service = AsyncTaskService()
    service.submit_task("NOOP", {}, run_at=datetime.now(UTC) + timedelta(seconds=1.5))
    assert service.claim_due_tasks(WORKER, 5) == []
    time.sleep(1.6)
    assert len(service.claim_due_tasks(WORKER, 5)) == 1


def test_only_registered_and_requested_types_are_claimed(app_ctx):
    service = AsyncTaskService()
    service.submit_task("NOOP", {})
    sleep = service.submit_task("SLEEP", {})
    assert [t.id for t in service.claim_due_tasks(WORKER, 5, task_types=["SLEEP"])] == [sleep.id]


def test_claim_records_the_lease(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("NOOP", {"a": 1})
    claimed = claim_one(service)
    assert (claimed.id, claimed.payload, claimed.attempt) == (task.id, {"a": 1}, 1)
    db.session.expire_all()
    row = service.get_task(task.id)
    assert row.status == "PROCESSING" and row.worker_id == WORKER and row.started_at is not None
    assert row.claim_token == claimed.claim_token
    assert kinds(service, task.id) == ["SUBMITTED", "CLAIMED"]


def test_success_stores_the_result(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("NOOP", {})
    claimed = claim_one(service)
    assert service.finish_task(claimed, TaskResult.success({"ok": 1})).status == "SUCCESS"
    db.session.expire_all()
    row = service.get_task(task.id)
    assert (row.status, row.result, row.error, row.claim_token) == ("SUCCESS", {"ok": 1}, None, None)
    assert row.finished_at is not None and row.finished_at >= row.started_at


def test_failures_retry_with_the_configured_delay_then_fail(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("EXPO_FAIL", {})  # EXPONENTIAL, base 0.4 s, 3 retries
    expected_delays = [0.4, 0.8, 1.6]
    for n, delay in enumerate(expected_delays, start=1):
        db.session.execute(update(AsyncTask).where(AsyncTask.id == task.id)
                           .values(next_run_at=datetime.now(UTC) - timedelta(seconds=1)))
        db.session.commit()
        claimed = claim_one(service)
        before = datetime.now(UTC)
        outcome = service.finish_task(claimed, TaskResult.failure(f"fail {n}"))
        assert (outcome.status, outcome.retry_delay) == ("RETRYING", delay)
        db.session.expire_all()
        row = service.get_task(task.id)
        assert row.retry_count == n and row.error == f"fail {n}"
        gap = (row.next_run_at - before).total_seconds()
        assert delay - 0.2 <= gap <= delay + 0.5, gap
        assert row.finished_at is None
    db.session.execute(update(AsyncTask).where(AsyncTask.id == task.id)
                       .values(next_run_at=datetime.now(UTC) - timedelta(seconds=1)))
    db.session.commit()
    claimed = claim_one(service)
    assert service.finish_task(claimed, TaskResult.failure("last")).status == "FAILURE"
    db.session.expire_all()
    row = service.get_task(task.id)
    assert (row.status, row.retry_count, row.error) == ("FAILURE", 3, "last")
    assert row.finished_at is not None
    assert kinds(service, task.id).count("RETRY_SCHEDULED") == 3


def test_non_retryable_failure_ends_at_once(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("FLAKY", {})
    claimed = claim_one(service)
    assert service.finish_task(claimed, TaskResult.failure("bad", retryable=False)).status == "FAILURE"
    assert service.get_task(task.id).retry_count == 0


def test_a_stale_lease_cannot_overwrite_the_outcome(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("NOOP", {})
    stale = claim_one(service, "worker-a")
    # worker-a is declared dead; the task is recovered and claimed by worker-b
    db.session.execute(update(Worker).values(status="DEAD"))
    db.session.commit()
    assert service.recover_orphans(3600, 0.1) == [task.id]
    fresh = claim_one(service, "worker-b")
    assert fresh.claim_token != stale.claim_token
    assert service.finish_task(stale, TaskResult.failure("late")).status is None
    assert service.finish_task(fresh, TaskResult.success({"by": "b"})).status == "SUCCESS"
    db.session.expire_all()
    row = service.get_task(task.id)
    assert (row.status, row.result) == ("SUCCESS", {"by": "b"})
    assert "LATE_RESULT_REFUSED" in kinds(service, task.id)


def test_cancel_and_finish_race_has_one_winner(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("FLAKY", {})
    claimed = claim_one(service)
    service.finish_task(claimed, TaskResult.failure("once"))  # RETRYING
    service.cancel_task(task.id)
    db.session.execute(update(AsyncTask).where(AsyncTask.id == task.id)
                       .values(next_run_at=datetime.now(UTC) - timedelta(seconds=1)))
    db.session.commit()
    assert service.claim_due_tasks(WORKER, 5) == []
    assert service.finish_task(claimed, TaskResult.success()).status is None
    assert service.get_task(task.id).status == "CANCELLED"


def test_release_puts_tasks_back_without_counting_a_retry(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("NOOP", {})
    claimed = claim_one(service)
    assert service.release_tasks([claimed], WORKER) == [task.id]
    db.session.expire_all()
    row = service.get_task(task.id)
    assert (row.status, row.retry_count, row.claim_token) == ("PENDING", 0, None)
    assert kinds(service, task.id)[-1] == "RELEASED"
    assert service.finish_task(claimed, TaskResult.success()).status is None


# -- recovery ---------------------------------------------------------------------------------


def _register(service: AsyncTaskService, worker_id: str) -> None:
    service.register_worker(worker_id, "host", 1, 1, 0.1)


def test_tasks_of_live_workers_are_left_alone(app_ctx):
    service = AsyncTaskService()
    _register(service, "live")
    task = service.submit_task("NOOP", {})
    claim_one(service, "live")
    assert service.heartbeat("live", 1)
    assert service.recover_orphans(3600, 10) == []
    assert service.get_task(task.id).status == "PROCESSING"


def test_stale_heartbeat_recovers_the_task(app_ctx):
    service = AsyncTaskService()
    _register(service, "sleepy")
    task = service.submit_task("NOOP", {})
    claim_one(service, "sleepy")
    time.sleep(0.4)  # three heartbeats of 0.1 s missed
    assert service.recover_orphans(3600, 0.1) == [task.id]
    db.session.expire_all()
    row = service.get_task(task.id)
    assert (row.status, row.recovery_count, row.worker_id) == ("PENDING", 1, None)
    recovered = service.events_for(task.id)[-1]
    assert recovered.kind == "RECOVERED" and "stopped heartbeating" in recovered.message
    assert db.session.get(Worker, "sleepy").status == "DEAD"
    assert service.heartbeat("sleepy", 0) is False


def test_overdue_task_is_recovered_even_with_a_live_worker(app_ctx):
    service = AsyncTaskService()
    _register(service, "busy")
    task = service.submit_task("NOOP", {})
    claim_one(service, "busy")
    time.sleep(0.3)
    service.heartbeat("busy", 1)
    assert service.recover_orphans(0.2, 10) == [task.id]
    assert "max-processing-time" in service.events_for(task.id)[-1].message


def test_endless_recoveries_end_in_failure(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("FATAL", {})  # default retry config: 3 retries -> 4 recoveries allowed
    max_recoveries = service.get_task(task.id).max_retry_count + 1
    for _ in range(max_recoveries):
        claim_one(service, "ghost")
        assert service.recover_orphans(3600, 0.1) == [task.id]
        assert service.get_task(task.id).status == "PENDING"
    claim_one(service, "ghost")
    service.recover_orphans(3600, 0.1)
    db.session.expire_all()
    row = service.get_task(task.id)
    assert row.status == "FAILURE" and "giving up" in row.error
    assert row.finished_at is not None


def test_events_record_every_state_change_with_its_time(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("FLAKY", {})
    claimed = claim_one(service)
    service.finish_task(claimed, TaskResult.failure("x"), traceback="Traceback: x")
    events = service.events_for(task.id)
    assert [(e.kind, e.from_status, e.to_status) for e in events] == [
        ("SUBMITTED", None, "PENDING"), ("CLAIMED", None, "PROCESSING"),
        ("RETRY_SCHEDULED", "PROCESSING", "RETRYING")]
    assert events[-1].traceback == "Traceback: x"
    assert all(e.at is not None for e in events)
    assert db.session.scalar(select(func.count()).select_from(TaskEvent)) == 3


# -- operator power features: cancel requests, pause, edit and retry ---------------------------


def test_cancel_of_a_running_task_is_a_request(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("NOOP", {})
    claimed = claim_one(service)
    requested = service.cancel_task(task.id, actor="alice")
    assert requested.status == "PROCESSING" and requested.cancel_requested_at is not None
    assert service.cancel_task(task.id).cancel_requested_at == requested.cancel_requested_at
    assert service.finish_task(claimed, TaskResult.cancelled()).status == "CANCELLED"
    db.session.expire_all()
    row = service.get_task(task.id)
    assert row.status == "CANCELLED" and row.finished_at is not None
    assert kinds(service, task.id)[-2:] == ["CANCEL_REQUESTED", "CANCELLED"]


@pytest.mark.parametrize("batched", [False, True])
def test_an_ignored_cancel_request_is_recorded_as_too_late(app_ctx, batched):
    from webapp.tasks.service import FinishedAttempt

    service = AsyncTaskService()
    task = service.submit_task("NOOP", {})
    claimed = claim_one(service)
    service.cancel_task(task.id)
    if batched:
        assert service.finish_many([FinishedAttempt(claimed, TaskResult.success())])[0].status == "SUCCESS"
    else:
        assert service.finish_task(claimed, TaskResult.success()).status == "SUCCESS"
    assert kinds(service, task.id)[-2:] == ["SUCCEEDED", "CANCEL_TOO_LATE"] or \
        kinds(service, task.id)[-2:] == ["CANCEL_TOO_LATE", "SUCCEEDED"]


def test_paused_types_are_not_claimed_but_still_queue(app_ctx):
    service = AsyncTaskService()
    service.pause_task_type("NOOP", actor="ops")
    noop = service.submit_task("NOOP", {})
    sleep = service.submit_task("SLEEP", {})
    assert [t.id for t in service.claim_due_tasks(WORKER, 5)] == [sleep.id]
    service.resume_task_type("NOOP", actor="ops")
    assert [t.id for t in service.claim_due_tasks(WORKER, 5)] == [noop.id]
    service.pause_task_type("*")
    service.submit_task("NOOP", {})
    assert service.claim_due_tasks(WORKER, 5) == []
    service.resume_task_type("*")
    assert len(service.claim_due_tasks(WORKER, 5)) == 1
    with pytest.raises(UnknownTaskType):
        service.pause_task_type("NOPE")


def test_edit_and_retry_creates_a_linked_task(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("ORDER", {"customer": "c", "amount": 1}, created_by="a@example.com")
    with pytest.raises(InvalidTransition):
        service.resubmit_task(task.id, {"customer": "c", "amount": 2})
    claimed = claim_one(service)
    service.finish_task(claimed, TaskResult.failure("bad amount", retryable=False))
    with pytest.raises(InvalidPayload):
        service.resubmit_task(task.id, {"customer": "c", "amount": "two"})
    new = service.resubmit_task(task.id, {"customer": "c", "amount": 2}, actor="ops")
    assert new.id != task.id and new.parent_id == task.id and new.status == "PENDING"
    assert new.payload == {"customer": "c", "amount": 2}
    assert new.created_by == "a@example.com"
    db.session.expire_all()
    original = service.get_task(task.id)
    assert (original.status, original.payload["amount"]) == ("FAILURE", 1)
    assert kinds(service, task.id)[-1] == "RESUBMITTED"


def test_search_finds_error_text_payload_text_and_ids(app_ctx):
    service = AsyncTaskService()
    order = service.submit_task("ORDER", {"customer": "Acme 100%_corp", "amount": 3})
    other = service.submit_task("NOOP", {"note": "nothing here"})
    failing = service.submit_task("FATAL", {})
    claimed = claim_one(service)  # ORDER has priority 0 like the others: the oldest first
    assert claimed.id == order.id
    service.finish_task(claimed, TaskResult.success())
    service.claim_due_tasks(WORKER, 5)
    db.session.execute(update(AsyncTask).where(AsyncTask.id == failing.id)
                       .values(error="Connection reset by peer"))
    db.session.commit()

    def found(text):
        return {t.id for t in service.list_tasks(TaskFilter(search=text)).items}

    assert found("acme") == {order.id}
    assert found("100%_c") == {order.id}  # LIKE wildcards are matched literally
    assert found("%") == {order.id}
    assert found("reset by") == {failing.id}
    assert found(str(other.id)) >= {other.id}
    assert found("no such text anywhere") == set()
    with pytest.raises(ValidationError):
        found("x" * 201)


def test_purge_deletes_only_old_finished_tasks_with_their_history(app_ctx):
    from webapp.tasks.models import Notification

    service = AsyncTaskService()
    old_done = service.submit_task("NOOP", {}, created_by="a@example.com").id
    claimed = claim_one(service)
    service.finish_task(claimed, TaskResult.success())
    old_cancelled = service.cancel_task(service.submit_task("NOOP", {}).id).id
    waiting = service.submit_task("NOOP", {}).id
    assert db.session.scalar(select(func.count()).select_from(Notification)) == 1
    later = datetime.now(UTC) + timedelta(seconds=1)
    with pytest.raises(ValidationError, match="only finished tasks"):
        service.purge_finished(later, ["PENDING"])
    assert service.purge_finished(datetime.now(UTC) - timedelta(days=1)) == 0
    assert service.purge_finished(later, ["CANCELLED"], batch_size=1, actor="ops") == 1
    db.session.expunge_all()
    assert service.get_task(old_cancelled) is None
    assert service.purge_finished(later.isoformat(), batch_size=1) == 1
    assert service.get_task(old_done) is None
    assert service.get_task(waiting).status == "PENDING"
    assert service.events_for(old_done) == []
    assert db.session.scalar(select(func.count()).select_from(Notification)) == 0


def test_purge_cli(app):
    with app.app_context():
        service = AsyncTaskService()
        service.cancel_task(service.submit_task("NOOP", {}).id)
    runner = app.test_cli_runner()
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    result = runner.invoke(args=["tasks", "purge", "--finished-before", later, "--status", "cancelled"])
    assert result.exit_code == 0 and "purged 1 task(s)" in result.output
    bad = runner.invoke(args=["tasks", "purge", "--finished-before", "yesterday"])
    assert bad.exit_code == 1 and "finished_before must be an ISO-8601 time" in bad.output


def test_a_failed_attempt_after_a_cancel_request_is_not_retried(app_ctx):
    service = AsyncTaskService()
    task = service.submit_task("FLAKY", {})
    claimed = claim_one(service)
    service.cancel_task(task.id)
    assert service.finish_task(claimed, TaskResult.failure("broke")).status == "CANCELLED"
    db.session.expire_all()
    row = service.get_task(task.id)
    assert (row.status, row.retry_count) == ("CANCELLED", 0)
    assert "after a cancel was requested (broke)" in row.error
    assert kinds(service, task.id)[-1] == "CANCELLED"


def test_the_claim_uses_the_due_index_on_fresh_unanalysed_tables(make_app):
    """Right after a burst of submits the planner must still walk ix_async_task_due in order."""
    app = make_app("postgres")
    with app.app_context():
        service = AsyncTaskService()
        service.submit_many([{"task_type": "NOOP", "payload": {}} for _ in range(3000)])
        db.session.execute(text("SET LOCAL enable_sort = off"))
        plan = "\n".join(db.session.execute(text(
            "EXPLAIN SELECT id FROM async_task WHERE status IN ('PENDING', 'RETRYING') "
            "AND next_run_at <= statement_timestamp() AND task_type = ANY(CAST(:t AS varchar[])) "
            "ORDER BY priority DESC, next_run_at, id LIMIT 10 FOR UPDATE SKIP LOCKED"),
            {"t": ["NOOP"]}).scalars())
        db.session.rollback()
        assert "ix_async_task_due" in plan and "Sort" not in plan, plan
        statements: list[str] = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            statements.append(statement)

        event.listen(db.engine, "before_cursor_execute", capture)
        try:
            assert len(service.claim_due_tasks(WORKER, 10)) == 10
        finally:
            event.remove(db.engine, "before_cursor_execute", capture)
        claim_at = next(i for i, sql in enumerate(statements) if "FOR UPDATE SKIP LOCKED" in sql)
        assert "SET LOCAL enable_sort = off" in statements[:claim_at]


def test_a_submitter_whose_clock_is_fast_does_not_delay_its_tasks(make_app, monkeypatch):
    """Submit times follow the database clock on PostgreSQL, not the submitting machine's."""
    from webapp.tasks import dialect_postgres

    app = make_app("postgres")
    real_utcnow = dialect_postgres.utcnow
    monkeypatch.setattr(dialect_postgres, "utcnow", lambda: real_utcnow() + timedelta(minutes=10))
    with app.app_context():
        app.extensions["async_task"].clock_offset = None
        service = AsyncTaskService()
        task = service.submit_task("NOOP", {})
        assert abs((task.next_run_at - real_utcnow()).total_seconds()) < 5
        assert abs((service.events_for(task.id)[0].at - real_utcnow()).total_seconds()) < 5
        assert [t.id for t in service.claim_due_tasks(WORKER, 5)] == [task.id]
