"""The workflow API, OpenAPI and CLI on both databases: submit, read, list, cancel, retry; bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks.models import AsyncTask
from webapp.workflows.models import Workflow, WorkflowEdge

PROCESSORS = ["tests.processors", "tests.workflow_processors"]


@pytest.fixture
def app(make_app, backend):
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS, ASYNC_TASK_WORKFLOW_MAX_TASKS=50)


@pytest.fixture
def client(app):
    with app.app_context():
        _, secret = create_token("wf-client", reach="all")
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return test_client


def stored(app):
    """Workflows, tasks and edges stored (bad input must change none of them)."""
    with app.app_context():
        counts = tuple(db.session.scalar(select(func.count()).select_from(model))
                       for model in (Workflow, AsyncTask, WorkflowEdge))
        db.session.rollback()
        return counts


def chain(n=3):
    return [{"key": f"s{i}", "task_type": "WF_ADD", "payload": {"n": i}, **({"after": [f"s{i-1}"]} if i else {})}
            for i in range(n)]


def test_submit_read_list_cancel_and_retry_over_the_api(app, client):
    answer = client.post("/api/workflows", json={
        "name": "nightly", "tasks": chain(), "callbacks": {"on_finish": {"task_type": "WF_CALLBACK", "payload": {}}}})
    assert answer.status_code == 202, answer.json
    workflow_id, task_ids = answer.json["id"], answer.json["task_ids"]
    assert set(task_ids) == {"s0", "s1", "s2"} and answer.headers["Location"].endswith(f"/api/workflows/{workflow_id}")
    shown = client.get(f"/api/workflows/{workflow_id}").json
    assert (shown["status"], shown["task_count"], shown["ended"]) == ("RUNNING", 3, 0)
    by_key = {task["key"]: task for task in shown["tasks"]}
    assert by_key["s0"]["status"] == "PENDING" and by_key["s2"] == {**by_key["s2"], "status": "WAITING",
                                                                      "after": ["s1"], "id": task_ids["s2"]}
    assert shown["counts"]["WAITING"] == 2
    assert [w["id"] for w in client.get("/api/workflows?name=nightly&status=RUNNING").json["items"]] == [workflow_id]
    assert client.get("/api/workflows?name=other").json["items"] == []
    assert client.get("/api/workflows?status=BOGUS").json["error"]["field"] == "status"
    cancelled = client.post(f"/api/workflows/{workflow_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "CANCELLED"
    assert {t["status"] for t in cancelled.json["tasks"]} == {"CANCELLED"}
    assert cancelled.json["callback_tasks"]["on_finish"]["status"] == "PENDING"
    again = client.post(f"/api/workflows/{workflow_id}/cancel")
    assert again.status_code == 409 and "cannot cancel workflow" in again.json["error"]["message"]
    retried = client.post(f"/api/workflows/{workflow_id}/retry")
    assert retried.status_code == 200 and retried.json["status"] == "RUNNING"
    assert client.post(f"/api/workflows/{workflow_id}/retry").status_code == 409
    assert client.get("/api/workflows/999999").status_code == 404
    # The task endpoint shows the waiting status too.
    assert client.get(f"/api/tasks/{task_ids['s2']}").json["status"] == "WAITING"


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"tasks": [{"key": "a", "task_type": "WF_ADD", "after": ["c"]},
                {"key": "b", "task_type": "WF_ADD", "after": ["a"]},
                {"key": "c", "task_type": "WF_ADD", "after": ["b"]},
                {"key": "d", "task_type": "WF_ADD", "after": ["c"]}]},
     "tasks", "cycle: a -> b -> c -> a"),
    ({"tasks": [{"key": "a", "task_type": "WF_ADD", "after": ["a"]}]}, "tasks", "cycle: a -> a"),
    ({"tasks": [{"key": "a", "task_type": "WF_ADD"}, {"key": "b", "task_type": "WF_ADD", "after": ["zz"]}]},
     "tasks[1].after[0]", "unknown key 'zz'"),
    ({"tasks": [{"key": "a", "task_type": "WF_ADD"}, {"key": "a", "task_type": "WF_ADD"}]},
     "tasks[1].key", "duplicate key 'a'"),
    ({"tasks": [{"key": "a", "task_type": "WF_ADD"}, {"key": "b", "task_type": "NOPE"}]},
     "tasks[1].task_type", "unknown task type 'NOPE'"),
    ({"tasks": [{"key": f"k{i}", "task_type": "WF_ADD"} for i in range(3)]
     + [{"key": "k3", "task_type": "SLEEP", "payload": {"seconds": "long"}}]},
     "tasks[3].payload.seconds", "seconds"),
    ({"tasks": [{"key": f"k{i}", "task_type": "WF_ADD"} for i in range(51)]}, "tasks", "at most 50 tasks"),
    ({"tasks": []}, "tasks", "non-empty"),
    ({"tasks": chain(), "on_failure": "explode"}, "on_failure", "cancel_dependents or wait"),
    ({"tasks": chain(), "callbacks": {"on_done": {"task_type": "WF_ADD"}}}, "callbacks.on_done", "unknown callback"),
    ({"tasks": chain(), "callbacks": {"on_success": {"task_type": "NOPE"}}}, "callbacks.on_success.task_type",
     "unknown task type"),
    ({"tasks": [{"key": "@x", "task_type": "WF_ADD"}]}, "tasks[0].key", "must not start with '@'"),
    ({"tasks": [{"key": "a", "task_type": "WF_ADD", "colour": "red"}]}, "tasks[0].colour", "unknown field"),
])
def test_bad_input_is_422_naming_the_field_and_stores_nothing(app, client, body, field, words):
    client.post("/api/workflows", json={"tasks": chain()})  # something stored already
    before = stored(app)
    answer = client.post("/api/workflows", json=body)
    assert answer.status_code == 422, answer.json
    assert answer.json["error"]["field"] == field
    assert words in answer.json["error"]["message"]
    assert stored(app) == before


def test_the_openapi_document_describes_the_workflow_endpoints(client):
    document = client.get("/api/openapi.json").json
    for path in ("/api/workflows", "/api/workflows/{workflow_id}", "/api/workflows/{workflow_id}/cancel",
                 "/api/workflows/{workflow_id}/retry"):
        assert path in document["paths"], path
    assert document["paths"]["/api/workflows"]["post"]["operationId"] == "submitWorkflow"


def test_the_cli_submits_lists_shows_cancels_and_retries(app, tmp_path: Path):
    runner = app.test_cli_runner()
    spec = tmp_path / "wf.json"
    spec.write_text(json.dumps({"name": "from-cli", "tasks": chain(2)}))
    result = runner.invoke(args=["workflows", "submit", str(spec)])
    assert result.exit_code == 0, result.output
    workflow_id = json.loads(result.output)["id"]
    listed = runner.invoke(args=["workflows", "list", "--name", "from-cli"])
    assert f"{workflow_id}" in listed.output and "0 / 2" in listed.output
    shown = json.loads(runner.invoke(args=["workflows", "show", str(workflow_id)]).output)
    assert [t["key"] for t in shown["tasks"]] == ["s0", "s1"]
    assert "2 task(s) cancelled" in runner.invoke(args=["workflows", "cancel", str(workflow_id)]).output
    assert "2 task(s) retried" in runner.invoke(args=["workflows", "retry", str(workflow_id)]).output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tasks": [{"key": "a", "task_type": "WF_ADD", "after": ["a"]}]}))
    refused = runner.invoke(args=["workflows", "submit", str(bad)])
    assert refused.exit_code == 1 and "tasks: the dependencies form a cycle: a -> a" in refused.output
    missing = runner.invoke(args=["workflows", "show", "424242"])
    assert missing.exit_code == 1 and "workflow 424242 does not exist" in missing.output
