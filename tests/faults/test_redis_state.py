"""Issue 10 item 17: only an answered Redis round trip may report Redis as back.

Redis dies during a recovery sweep, after the sweep lock was taken: dropping the recovered
task's lock fails (``REDIS UNAVAILABLE``) and so does releasing the sweep lock. The consumer
used to call Redis back right after that block, logging "reachable again" milliseconds after
the outage and showing Redis as up on the console.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from flask import Flask

from tests.proc_utils import RedisServer
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.consumer import Consumer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@contextmanager
def engine_log() -> Iterator[list[str]]:
    """The engine's log lines while the block runs (the app's logging setup replaces caplog's)."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("webapp.tasks")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def orphan_a_task(app: Flask) -> int:
    """A PROCESSING task whose worker has no row: the next sweep recovers it."""
    with app.app_context():
        service = AsyncTaskService()
        task = service.submit_task("NOOP", {})
        [claimed] = [t for t in service.claim_due_tasks("vanished-worker", 10) if t.id == task.id]
        db.session.remove()
        return claimed.id


def test_redis_dying_during_a_sweep_is_not_called_back(make_app: Callable[..., Flask],
                                                       private_redis: RedisServer) -> None:
    app = make_app("postgres", REDIS_URL=private_redis.url, ASYNC_TASK_PROCESSORS=["tests.processors"])
    task_id = orphan_a_task(app)
    consumer = Consumer(app)  # not started: the sweep is driven by hand
    sweep = consumer._sweep

    def redis_dies_then_sweep() -> list[int]:
        private_redis.kill()
        return sweep()

    consumer._sweep = redis_dies_then_sweep  # type: ignore[method-assign]
    with engine_log() as lines:
        consumer._recover()
    text = "\n".join(lines)
    with app.app_context():
        assert AsyncTaskService().get_task(task_id).status == "PENDING"  # the sweep itself ran
    assert "REDIS UNAVAILABLE" in text
    assert "reachable again" not in text
    assert consumer.redis_ok is False
    assert app.extensions["async_task"].redis_ok is False


def test_an_answered_round_trip_calls_redis_back(make_app: Callable[..., Flask],
                                                 private_redis: RedisServer) -> None:
    app = make_app("postgres", REDIS_URL=private_redis.url, ASYNC_TASK_PROCESSORS=["tests.processors"])
    consumer = Consumer(app)
    consumer.lock_keeper.down(RuntimeError("earlier outage"))
    with engine_log() as lines:
        consumer._recover()
    text = "\n".join(lines)
    assert "reachable again" in text
    assert consumer.redis_ok is True and app.extensions["async_task"].redis_ok is True
