"""Issue 10 items 5 and 24: nothing anonymous is expensive or tells what runs here.

* ``/readyz`` gives anyone the states only; the error's type needs a token.
* ``/api/openapi.json`` names the registered task types only to a caller with a valid token.
* ``/metrics`` needs ``ASYNC_TASK_METRICS_TOKEN`` unless ``ASYNC_TASK_METRICS_PUBLIC=true``, and a
  scrape is served from a per-process copy: however many clients loop on it, the tables are read
  once per ``ASYNC_TASK_METRICS_CACHE_SECONDS`` (the cost no longer grows with the task table).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Flask
from sqlalchemy import event

from tests.smtp_server import free_port
from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.metrics import metrics_cache

METRICS_TOKEN = "metrics-token-5f0e9d8c7b6a5f4e3d2c1b0a"


def _api_token(app: Flask, name: str = "ops-reader") -> str:
    with app.app_context():
        return create_token(name)[1]


def test_readyz_gives_states_only_unless_asked_with_a_token(make_app: Callable[..., Flask]) -> None:
    app = make_app("sqlite", MAIL_SERVER="127.0.0.1", MAIL_PORT=free_port(),
                   ASYNC_TASK_METRICS_TOKEN=METRICS_TOKEN)
    client = app.test_client()
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 503
    assert anonymous.get_json() == {"status": "unavailable", "database": "ok", "redis": "not configured",
                                    "smtp": "error", "checks": {"database": "ok", "redis": "not configured",
                                                                "smtp": "error"}}
    assert "Refused" not in anonymous.get_data(as_text=True)
    wrong = client.get("/readyz", headers={"Authorization": "Bearer tdk_not-a-token"})
    assert wrong.get_json()["smtp"] == "error"
    for token in (_api_token(app), METRICS_TOKEN):
        detailed = client.get("/readyz", headers={"Authorization": f"Bearer {token}"})
        assert detailed.status_code == 503
        assert detailed.get_json()["smtp"].startswith("error: ConnectionRefusedError")


def test_openapi_names_task_types_only_to_token_holders(make_app: Callable[..., Flask]) -> None:
    app = make_app("sqlite")
    client = app.test_client()
    registered = set(app.extensions["async_task"].registry.task_types())
    assert registered
    anonymous = client.get("/api/openapi.json")
    assert anonymous.status_code == 200
    text = anonymous.get_data(as_text=True)
    assert not [name for name in registered if f'"{name}"' in text]
    anonymous_schemas = anonymous.get_json()["components"]["schemas"]
    assert anonymous_schemas["TaskSubmission"] == {"$ref": "#/components/schemas/GenericTaskSubmission"}
    generic = anonymous_schemas["GenericTaskSubmission"]
    assert generic["properties"]["task_type"] == {"type": "string", "minLength": 1, "maxLength": 100}
    with_token = client.get("/api/openapi.json", headers={"Authorization": f"Bearer {_api_token(app)}"})
    schemas = with_token.get_json()["components"]["schemas"]
    mapping = schemas["TaskSubmission"]["discriminator"]["mapping"]
    assert set(mapping) == registered
    for task_type, ref in mapping.items():
        assert schemas[ref.rpartition("/")[2]]["properties"]["task_type"]["enum"] == [task_type]


def test_metrics_are_closed_by_default(make_app: Callable[..., Flask]) -> None:
    app = make_app("sqlite")
    client = app.test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert "ASYNC_TASK_METRICS_TOKEN" in refused.get_data(as_text=True)
    assert "ASYNC_TASK_METRICS_PUBLIC=true" in refused.get_data(as_text=True)
    assert b"taskdeck_" not in refused.data
    # An API token is not the metrics token.
    assert client.get("/metrics", headers={"Authorization": f"Bearer {_api_token(app)}"}).status_code == 401


def test_metrics_open_only_when_a_setting_says_so(make_app: Callable[..., Flask]) -> None:
    assert make_app("sqlite", ASYNC_TASK_METRICS_PUBLIC=True).test_client().get("/metrics").status_code == 200
    closed = make_app("sqlite", ASYNC_TASK_METRICS_TOKEN=METRICS_TOKEN).test_client()
    assert closed.get("/metrics").status_code == 401
    assert closed.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).status_code == 200


def test_concurrent_scrapes_read_the_tables_once(make_app: Callable[..., Flask]) -> None:
    """16 clients scraping at once, then again and again: one collection, no SQL per scrape."""
    app = make_app("postgres", ASYNC_TASK_METRICS_TOKEN=METRICS_TOKEN, ASYNC_TASK_METRICS_CACHE_SECONDS=60)
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    statements: list[str] = []
    with app.app_context():
        engine = db.engine

    def count(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    answers: list[int] = []
    start = threading.Barrier(16)

    def scrape_three_times() -> None:
        client = app.test_client()
        start.wait(timeout=30)
        for _ in range(3):
            answers.append(client.get("/metrics", headers=headers).status_code)

    try:
        threads = [threading.Thread(target=scrape_three_times) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert answers == [200] * 48
    with app.app_context():
        assert metrics_cache().collections == 1
    collected = len(statements)
    # One collection's handful of grouped queries (tasks, durations, due, paused, notifications,
    # workers, the history's mark, limit overrides), not 48 of them.
    assert 0 < collected <= 12, "\n".join(statements)

    statements.clear()
    event.listen(engine, "before_cursor_execute", count)
    try:
        for _ in range(20):
            assert app.test_client().get("/metrics", headers=headers).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert statements == []  # a cached scrape touches no table, whatever its size


def test_a_stale_copy_is_refreshed(make_app: Callable[..., Flask]) -> None:
    app = make_app("sqlite", ASYNC_TASK_METRICS_PUBLIC=True, ASYNC_TASK_METRICS_CACHE_SECONDS=0.05)
    client = app.test_client()
    client.get("/metrics")
    threading.Event().wait(0.1)  # older than the cache's age limit (no event marks "stale")
    client.get("/metrics")
    with app.app_context():
        assert metrics_cache().collections == 2
