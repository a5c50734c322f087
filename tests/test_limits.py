"""Flow control on real SQLite and PostgreSQL: limits checked at start-up, enforced by the claim."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from flask import Flask
from sqlalchemy import update

from webapp.extensions import db
from webapp.tasks import AsyncTaskService, RateLimit, TaskLimits, TaskProcessor, TaskResult, Unique
from webapp.tasks.errors import RegistryError
from webapp.tasks.leases import Leases
from webapp.tasks.limit_models import TaskLimitStart
from webapp.tasks.limits import ClaimLimit
from webapp.tasks.models import AsyncTask, utcnow
from webapp.tasks.registry import ProcessorRegistry

from .conftest import wait_until

PROCESSORS = ["tests.processors", "tests.limit_processors"]
WORKER = "limits-worker"


@pytest.fixture
def limited_app(make_app, backend) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


# -- the processor API, checked at start-up ----------------------------------------------------


@pytest.mark.parametrize(("build", "field"), [
    (lambda: TaskLimits(concurrency=0), "concurrency"),
    (lambda: TaskLimits(concurrency=-1), "concurrency"),
    (lambda: TaskLimits(concurrency=True), "concurrency"),
    (lambda: TaskLimits(rate=RateLimit(0, 1)), "rate.count"),
    (lambda: TaskLimits(rate=RateLimit(5, 0)), "rate.per_seconds"),
    (lambda: TaskLimits(concurrency=2, concurrency_key="a.b"), "concurrency_key"),
    (lambda: TaskLimits(concurrency_key="customer_id"), "concurrency_key"),
    (lambda: TaskLimits(rate_key="tenant"), "rate_key"),
    (lambda: TaskLimits(time_limit=0), "time_limit"),
    (lambda: TaskLimits(time_limit=5, soft_time_limit=6), "soft_time_limit"),
    (lambda: TaskLimits(isolation="fork"), "isolation"),
    (lambda: TaskLimits(unique=Unique(fields=("x",), window_seconds=-1)), "unique.window_seconds"),
    (lambda: TaskLimits(unique=Unique(fields=("x",), statuses=("DONE",))), "unique.statuses"),
])
def test_bad_limits_are_refused_naming_the_field(build, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        build()


@dataclass
class KeyedPayload:
    customer_id: int


def _registry_with(limits: TaskLimits) -> ProcessorRegistry:
    class Limited(TaskProcessor):
        task_type = "LIMITED"
        payload_type = KeyedPayload

        def process(self, task, payload):
            return TaskResult.success()

        def get_limits(self):
            return limits

    registry = ProcessorRegistry()
    registry.register(Limited())
    return registry


def test_a_key_that_is_not_a_payload_field_stops_start_up():
    with pytest.raises(RegistryError, match=r"LIMITED: concurrency_key 'tenant' is not a field of KeyedPayload"):
        _registry_with(TaskLimits(concurrency=1, concurrency_key="tenant"))
    with pytest.raises(RegistryError, match=r"LIMITED: rate_key 'region'"):
        _registry_with(TaskLimits(rate=RateLimit(1, 1), rate_key="region"))
    with pytest.raises(RegistryError, match=r"LIMITED: unique.fields 'name'"):
        _registry_with(TaskLimits(unique=Unique(fields=("name",))))
    registry = _registry_with(TaskLimits(concurrency=3, concurrency_key="customer_id"))
    assert registry.limits_of("LIMITED").concurrency == 3
    assert registry.limits_of("UNKNOWN") == TaskLimits()


def test_limits_built_wrong_inside_get_limits_stop_start_up_naming_the_type():
    class Broken(TaskProcessor):
        task_type = "BROKEN"

        def process(self, task, payload):
            return TaskResult.success()

        def get_limits(self):
            return TaskLimits(concurrency=2, time_limit=1, soft_time_limit=2)

    with pytest.raises(RegistryError, match=r"BROKEN: get_limits\(\): soft_time_limit \(2\) is above time_limit"):
        ProcessorRegistry().register(Broken())


def test_an_app_with_a_bad_limit_does_not_start(make_app):
    with pytest.raises(RegistryError, match="unique.fields"):
        make_app("sqlite", ASYNC_TASK_PROCESSORS=["tests.processors", "tests.bad_limit_processors"])


# -- the claim ---------------------------------------------------------------------------------


def _claimed_ids(service: AsyncTaskService, limit: int = 50, worker: str = WORKER) -> list[int]:
    return [task.id for task in service.claim_due_tasks(worker, limit)]


def test_concurrency_per_key_holds_and_other_keys_and_types_still_start(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        a = [service.submit_task("PER_CUSTOMER", {"customer_id": 1}).id for _ in range(5)]
        b = [service.submit_task("PER_CUSTOMER", {"customer_id": 2}).id for _ in range(3)]
        free = [service.submit_task("NOOP", {}).id for _ in range(3)]
        claimed = _claimed_ids(service)
        assert sorted(claimed) == sorted(a[:2] + b[:2] + free)
        assert _claimed_ids(service) == []  # both keys at their limit; nothing handed back
        waiting = {t.id: t.status for t in AsyncTask.query.filter(AsyncTask.id.in_(a + b))}
        assert [waiting[i] for i in a[2:] + b[2:]] == ["PENDING"] * 4
        # One of customer 1 ends: exactly one more of customer 1 may start, the oldest first.
        attempt = _attempt(service, a[0])
        service.finish_task(attempt, TaskResult.success(), worker_id=WORKER)
        assert _claimed_ids(service) == [a[2]]


def _attempt(service: AsyncTaskService, task_id: int):
    """The running attempt of ``task_id`` as its worker holds it."""
    [attempt] = [t for t in service.attempts_held_by(WORKER, older_than=-1) if t.id == task_id]
    return attempt


def test_priority_order_holds_among_the_tasks_that_may_start(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        low = service.submit_task("ONE_AT_A_TIME", {}, priority=1).id
        high = service.submit_task("ONE_AT_A_TIME", {}, priority=9).id
        noop_mid = service.submit_task("NOOP", {}, priority=5).id
        noop_low = service.submit_task("NOOP", {}, priority=0).id
        assert [t.id for t in service.claim_due_tasks(WORKER, 2)] == [high, noop_mid]
        assert [t.id for t in service.claim_due_tasks(WORKER, 2)] == [noop_low]  # low waits for high
        service.finish_task(_attempt(service, high), TaskResult.success(), worker_id=WORKER)
        assert _claimed_ids(service) == [low]


def test_a_dead_workers_slots_come_back_with_recovery(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        service.register_worker("dies", "host", 1, 2, heartbeat_interval=0.2)
        ids = [service.submit_task("PER_CUSTOMER", {"customer_id": 7}).id for _ in range(3)]
        assert sorted(_claimed_ids(service, worker="dies")) == ids[:2]
        assert _claimed_ids(service) == []
        wait_until(lambda: service.recover_orphans(3600, 0.2), timeout=10, message="recovery")
        again = _claimed_ids(service)
        assert len(again) == 2 and set(again) <= set(ids)


def test_rate_limits_starts_per_window(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        ids = [service.submit_task("RATED", {}).id for _ in range(7)]
        assert _claimed_ids(service) == ids[:3]
        assert _claimed_ids(service) == []  # finishing does not free a rate slot: time does
        for task_id in ids[:3]:
            service.finish_task(_attempt(service, task_id), TaskResult.success(), worker_id=WORKER)
        assert _claimed_ids(service) == []
        later = wait_until(lambda: _claimed_ids(service), timeout=5, interval=0.1, message="next window")
        assert later == ids[3:6]


def test_rate_per_key_and_old_starts_pruned(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        ids = {tenant: [service.submit_task("RATED_PER_TENANT", {"tenant": tenant}).id for _ in range(3)]
               for tenant in ("a", "b")}
        assert sorted(_claimed_ids(service)) == sorted(ids["a"][:2] + ids["b"][:2])
        assert _claimed_ids(service) == []
        # Starts older than the window no longer count, and the next claim deletes them.
        db.session.execute(update(TaskLimitStart).values(started_at=utcnow().replace(year=2020)))
        db.session.commit()
        assert sorted(_claimed_ids(service)) == sorted([ids["a"][2], ids["b"][2]])
        assert TaskLimitStart.query.count() == 2


def test_types_without_limits_take_the_plain_claim(limited_app):
    with limited_app.app_context():
        leases = Leases()
        assert leases.claim_limits(["NOOP", "SLEEP"]) == []  # -> Dialect.claim, unchanged
        assert leases.claim_limits(["NOOP", "PER_CUSTOMER", "RATED"]) == [
            ClaimLimit("PER_CUSTOMER", 2, "customer_id", None, None, None),
            ClaimLimit("RATED", None, None, 3, 1.0, None)]
