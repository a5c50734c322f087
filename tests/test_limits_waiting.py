"""Why a waiting task has not started (``AsyncTaskService.waiting_reasons``), on real SQLite and PostgreSQL.

Also: a task whose start-by deadline passes notifies its creator like a failed one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import event

from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.notifications.queries import notifications_for_task
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import utcnow

from .conftest import wait_until

PROCESSORS = ["tests.processors", "tests.limit_processors", "tests.notify_processors"]
CREATOR = "creator@example.com"


@pytest.fixture
def limited_app(make_app, backend) -> Iterator[Flask]:
    app = make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)
    with app.app_context():
        yield app


def _claim(service: AsyncTaskService) -> list[int]:
    ids = [task.id for task in service.claim_due_tasks("waiting-worker", 50)]
    db.session.remove()
    return ids


def test_a_task_over_its_concurrency_key_says_which_key_and_how_many_run(limited_app):
    service = AsyncTaskService()
    busy = [service.submit_task("PER_CUSTOMER", {"customer_id": 42}).id for _ in range(3)]
    other = service.submit_task("PER_CUSTOMER", {"customer_id": 7}).id
    assert sorted(_claim(service)) == sorted([*busy[:2], other])
    one = service.submit_task("ONE_AT_A_TIME", {}).id
    two = service.submit_task("ONE_AT_A_TIME", {}).id
    assert _claim(service) == [one]
    reasons = service.waiting_reasons([*busy, other, one, two])
    assert set(reasons) == {busy[2], two}  # running tasks have no reason
    [hold] = reasons[busy[2]].holds
    assert (hold.kind, hold.key, hold.in_use, hold.limit) == ("concurrency", "customer_id=42", 2, 2)
    assert reasons[busy[2]].describe() == "waiting: limit customer_id=42, 2 of 2 running"
    assert reasons[two].describe() == "waiting: limit 1 of 1 running"


def test_a_key_below_its_limit_names_no_limit(limited_app):
    service = AsyncTaskService()
    first = service.submit_task("PER_CUSTOMER", {"customer_id": 1}).id
    assert _claim(service) == [first]
    waiting = service.submit_task("PER_CUSTOMER", {"customer_id": 1}).id
    assert service.waiting_reasons([waiting]) == {}  # one of two runs: the next claim takes it


def test_a_rate_limited_task_says_when_the_next_start_may_come(limited_app):
    service = AsyncTaskService()
    ids = [service.submit_task("RATED", {"n": n}).id for n in range(5)]
    assert len(_claim(service)) == 3  # three starts a second
    reasons = service.waiting_reasons(ids)
    assert len(reasons) == 2
    hold = next(iter(reasons.values())).holds[0]
    assert (hold.kind, hold.key, hold.in_use, hold.limit, hold.per_seconds) == ("rate", None, 3, 3, 1.0)
    assert hold.next_start_in is not None and 0 <= hold.next_start_in <= 1.0
    assert next(iter(reasons.values())).describe().startswith("waiting: rate 3 per 1 s, next start in ")
    tenant = [service.submit_task("RATED_PER_TENANT", {"tenant": "acme"}).id for _ in range(3)]
    assert len(_claim(service)) == 2
    [(_, waiting)] = [(t, w) for t, w in service.waiting_reasons(tenant).items()]
    assert waiting.holds[0].key == "tenant=acme"
    assert "for tenant=acme" in waiting.describe()


def test_a_paused_type_and_a_start_by_deadline_are_shown_and_future_tasks_name_no_limit(limited_app):
    service = AsyncTaskService()
    deadline = utcnow() + timedelta(hours=1)
    paused = service.submit_task("NOOP", {}, start_by=deadline).id
    service.pause_task_type("NOOP", actor="ops")
    later = service.submit_task("ONE_AT_A_TIME", {}, run_at=utcnow() + timedelta(hours=1)).id
    running = service.submit_task("ONE_AT_A_TIME", {}).id
    assert _claim(service) == [running]
    reasons = service.waiting_reasons([paused, later, running, 10**9])
    assert set(reasons) == {paused}  # the later one is not due: its time holds it, not the limit
    assert reasons[paused].describe() == "waiting: task type paused"
    assert abs((reasons[paused].start_by - deadline).total_seconds()) < 1
    assert service.waiting_reasons([]) == {}


def test_a_page_of_tasks_costs_a_fixed_number_of_queries(limited_app):
    service = AsyncTaskService()
    ids = [service.submit_task("PER_CUSTOMER", {"customer_id": n % 5}).id for n in range(40)]
    ids += [service.submit_task("RATED", {"n": n}).id for n in range(20)]
    _claim(service)
    statements: list[str] = []

    def count(*_args) -> None:
        statements.append("query")

    engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        reasons = AsyncTaskService().waiting_reasons(ids)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(reasons) >= 30 + 17  # every waiting task of a saturated key or window
    assert len(statements) <= 6, statements


def test_a_task_past_its_start_deadline_notifies_its_creator(limited_app):
    service = AsyncTaskService()
    task = service.submit_task("MAIL_OK", {}, created_by=CREATOR, start_by=utcnow() + timedelta(seconds=0.3))
    quiet = service.submit_task("QUIET", {}, created_by=CREATOR, start_by=utcnow() + timedelta(seconds=0.3))
    wait_until(lambda: utcnow() > max(task.start_by, quiet.start_by), timeout=5, message="deadline")
    assert sorted(service.expire_start_deadlines()) == sorted([task.id, quiet.id])
    db.session.expire_all()
    [note] = notifications_for_task(task.id)
    assert (note.type, note.recipient, note.status) == ("EMAIL", CREATOR, "PENDING")
    assert note.subject == f"Task MAIL_OK #{task.id} failed"
    assert "start deadline passed" in note.content
    assert notifications_for_task(quiet.id) == []  # its processor asks for no failure notifications


def test_the_api_task_says_why_it_waits(limited_app):
    service = AsyncTaskService()
    ids = [service.submit_task("ONE_AT_A_TIME", {}).id for _ in range(2)]
    assert _claim(service) == [ids[0]]
    _, secret = create_token("waiting-reader", reach="all")
    db.session.remove()
    client = limited_app.test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    held = client.get(f"/api/tasks/{ids[1]}", headers=headers).get_json()
    assert held["waiting_reason"] == "waiting: limit 1 of 1 running"
    assert client.get(f"/api/tasks/{ids[0]}", headers=headers).get_json()["waiting_reason"] is None
