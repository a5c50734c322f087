"""The hot path of ``POST /api/tasks``: cached token checks, one-statement submit, no pre-ping.

Each shortcut must keep the guarantees of the slow path: a revoke in this process is immediate
(another process's within ``VERIFIED_TOKEN_TTL``), a submitted task has its SUBMITTED event and
wakes consumers, a caller's open transaction is not committed behind its back, and a pooled
connection the server killed is replaced instead of failing a request.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest
from flask import Flask
from sqlalchemy import func, select, text, update

from webapp.accounts.models import ApiToken
from webapp.accounts.tokens import (
    VERIFIED_TOKEN_TTL,
    create_token,
    revoke_token,
    verify_token_cached,
)
from webapp.dbliveness import connection_looks_dead
from webapp.extensions import db
from webapp.tasks.models import AsyncTask, AuditEntry, TaskEvent, utcnow
from webapp.tasks.serialize import task_to_dict
from webapp.tasks.service import AsyncTaskService


def test_token_cache_ttl_is_short() -> None:
    assert 0 < VERIFIED_TOKEN_TTL <= 2.0


def test_revoke_in_this_process_is_immediate_even_when_cached(app_ctx: Flask) -> None:
    _, secret = create_token("cached")
    assert verify_token_cached(secret) is not None
    assert verify_token_cached(secret) is not None  # now served from the cache
    revoke_token("cached")
    assert verify_token_cached(secret) is None


def test_revoke_by_another_process_takes_effect_within_the_ttl(app_ctx: Flask) -> None:
    _, secret = create_token("elsewhere")
    assert verify_token_cached(secret) is not None
    assert verify_token_cached("tdk_unknown") is None
    # Another process revokes: a plain UPDATE this process's cache knows nothing about.
    db.session.execute(update(ApiToken).where(ApiToken.name == "elsewhere").values(revoked_at=utcnow()))
    db.session.commit()
    assert verify_token_cached(secret) is not None  # still trusted until the TTL runs out
    deadline = time.monotonic() + VERIFIED_TOKEN_TTL + 3
    while verify_token_cached(secret) is not None:
        assert time.monotonic() < deadline, "a revoke elsewhere was never noticed"
        time.sleep(0.05)


def test_refused_tokens_are_not_cached(app_ctx: Flask) -> None:
    for index in range(50):
        assert verify_token_cached(f"tdk_guess{index}") is None
    cache = app_ctx.extensions.get("api_token_cache")
    assert cache is None or not cache._entries


@pytest.fixture
def pg_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app("postgres")


def test_one_statement_submit_matches_the_orm_path(pg_app: Flask) -> None:
    with pg_app.app_context():
        service = AsyncTaskService()
        fast = service.submit("NOOP", {"n": 1}, created_by="alice", principal="token:alice").task
        db.session.remove()
        assert isinstance(fast, AsyncTask) and fast.id is not None
        service.session.add(AuditEntry(actor="x", action="pending", target_type=None, target_id=None))
        slow = service.submit("NOOP", {"n": 1}, created_by="alice",
                              principal="token:alice").task  # pending work: ORM path
        db.session.remove()
        stored = db.session.get(AsyncTask, fast.id)
        assert stored is not None
        answer = task_to_dict(fast)
        assert answer == task_to_dict(stored)
        assert {k: v for k, v in answer.items() if k not in ("id", "created_at", "updated_at", "next_run_at")} == \
            {k: v for k, v in task_to_dict(slow).items() if k not in ("id", "created_at", "updated_at", "next_run_at")}
        events = db.session.execute(select(TaskEvent.kind, TaskEvent.to_status, TaskEvent.actor)
                                    .where(TaskEvent.task_id == fast.id)).all()
        # The SUBMITTED event names who submitted (the principal), not the creator to notify.
        assert [tuple(e) for e in events] == [("SUBMITTED", "PENDING", "token:alice")]
        # The connection went back to the pool in its normal (transactional) mode.
        assert db.session.connection().connection.dbapi_connection.autocommit is False
        db.session.remove()


def test_one_statement_submit_notifies_listeners(pg_app: Flask, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute("LISTEN async_task_new_work")
        with pg_app.app_context():
            AsyncTaskService().submit("NOOP", {})
            db.session.remove()
        received = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in received] == ["async_task_new_work"]


def test_open_transaction_of_the_caller_is_not_committed(pg_app: Flask) -> None:
    with pg_app.app_context():
        service = AsyncTaskService()
        db.session.execute(text("SELECT 1"))  # the caller's transaction is open
        task = service.submit("NOOP", {}, commit=False).task
        db.session.rollback()
        assert db.session.get(AsyncTask, task.id) is None
        db.session.remove()


def test_invalid_submit_writes_nothing(pg_app: Flask) -> None:
    with pg_app.app_context():
        before = db.session.scalar(select(func.count()).select_from(AsyncTask))
        with pytest.raises(Exception, match="parent"):
            AsyncTaskService().submit("NOOP", {}, parent_id=2**62)  # no such parent: FK refuses
        db.session.remove()
        assert db.session.scalar(select(func.count()).select_from(AsyncTask)) == before
        assert db.session.connection().connection.dbapi_connection.autocommit is False
        db.session.remove()


def test_connection_killed_while_idle_is_replaced_without_an_error(pg_app: Flask, pg_url: str) -> None:
    with pg_app.app_context():
        engine = db.engine
        assert not engine.pool._pre_ping  # the socket check replaces it
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            dbapi = connection.connection.dbapi_connection
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 5
        while not connection_looks_dead(dbapi):
            assert time.monotonic() < deadline, "the killed connection never looked dead"
            time.sleep(0.02)
        for _ in range(3):  # every pooled connection is checked out again: none fails
            task = AsyncTaskService().submit("NOOP", {}).task
            db.session.remove()
            assert task.id is not None
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != pid


def test_idempotent_repeat_on_the_fast_path_returns_the_first_task(pg_app: Flask) -> None:
    with pg_app.app_context():
        service = AsyncTaskService()
        first = service.submit("NOOP", {"n": 1}, idempotency_key="k", idempotency_scope="a")
        db.session.remove()
        again = service.submit("NOOP", {"n": 1}, idempotency_key="k", idempotency_scope="a")
        assert (first.created, again.created) == (True, False)
        assert again.task.id == first.task.id and again.task.payload == {"n": 1}
        assert not db.session().in_transaction()  # the autocommit connection went back to the pool
        assert db.session.connection().connection.dbapi_connection.autocommit is False
        db.session.remove()
        other = service.submit("NOOP", {"n": 3}, idempotency_key="k", idempotency_scope="b")
        assert other.created and other.task.id != first.task.id
        db.session.remove()
        count = db.session.scalar(select(func.count()).select_from(TaskEvent)
                                  .where(TaskEvent.task_id.in_([first.task.id, other.task.id])))
        assert count == 2
        db.session.remove()
