"""Fixtures of the fault suite: worker subprocesses, a private Redis, the run's PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.faults.support import FAULT_PROCESSORS
from tests.proc_utils import RedisServer, worker_environment


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may kill and restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
def run_log(tmp_path: Path) -> Path:
    """The file the processors append ``start``/``done`` lines to."""
    return tmp_path / "runs.log"


@pytest.fixture
def lock_prefix() -> str:
    """A Redis key prefix of this test's own."""
    return f"faults-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def pg_app(make_app: Callable[..., Flask]) -> Flask:
    """The test's own app on PostgreSQL (creating it empties the tables), without Redis."""
    return make_app("postgres", ASYNC_TASK_PROCESSORS=FAULT_PROCESSORS.split(","))


@pytest.fixture
def pg_env(pg_url: str, redis_url: str, lock_prefix: str, run_log: Path,
           tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Builds a worker environment on PostgreSQL + the shared Redis (``redis_url=None``: none)."""

    def build(**settings: Any) -> dict[str, str]:
        settings.setdefault("redis_url", redis_url)
        settings.setdefault("ASYNC_TASK_PROCESSORS", FAULT_PROCESSORS)
        return worker_environment(pg_url, lock_prefix=lock_prefix, run_log=run_log,
                                  tmp_path=tmp_path, **settings)

    return build
