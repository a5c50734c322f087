"""Schemathesis over the whole API with stateful links: where it runs, and a guard that it can.

The run itself is ``tests/test_api_schemathesis.py``: the schemathesis CLI against a live server
on SQLite and PostgreSQL, all phases (examples, coverage, fuzzing, stateful), ``--checks all``.
Its stateful phase chains calls through links schemathesis infers from the OpenAPI document and
from ``Location`` headers (a run here reported "API Links: 34 inferred", ten scenarios). Nothing
there asserts that the links exist, so a document change could quietly leave the stateful phase
with nothing to chain; this test fails first when that happens.
"""

from __future__ import annotations

from collections.abc import Callable

import schemathesis
from flask import Flask

from tests.security.support import build_world


def test_the_openapi_document_gives_the_stateful_phase_links_to_follow(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    document = app.test_client().get("/api/openapi.json").get_json()
    schema = schemathesis.openapi.from_dict(document)
    schema.as_state_machine()  # runs schemathesis' link inference over the document
    linked = schema.operations_with_incoming_links()
    assert {"GET /api/tasks/{task_id}", "POST /api/tasks/{task_id}/cancel", "POST /api/tasks/{task_id}/retry",
            "POST /api/tasks/{task_id}/resubmit"} <= set(linked), linked


def test_created_tasks_point_to_themselves_for_location_inference(make_app: Callable[..., Flask]) -> None:
    """The second source of links: every call that creates a task answers with its Location."""
    world = build_world(make_app())
    client = world.app.test_client()
    bearer = {"Authorization": f"Bearer {world.token}"}
    created = client.post("/api/tasks", headers=bearer, json={"task_type": "NOOP", "payload": {}})
    resubmitted = client.post(f"/api/tasks/{world.failure_id}/resubmit", headers=bearer, json={"payload": {}})
    for response in (created, resubmitted):
        assert response.status_code == 202
        assert response.headers["Location"] == f"/api/tasks/{response.get_json()['id']}"
        assert client.get(response.headers["Location"], headers=bearer).status_code == 200
