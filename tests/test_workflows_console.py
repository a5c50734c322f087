"""The workflow console pages on both databases: list with progress, the SVG graph and its live
fragment, the grouped view of a large workflow, cancel and retry (operators, audited), and a
task's page naming its workflow, parents and children."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from tests.console_support import htmx, logged_in_client
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AuditEntry
from webapp.workflows.queries import workflow_detail

PROCESSORS = ["tests.processors", "tests.workflow_processors"]


@pytest.fixture
def app(make_app, backend):
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def submit(app, tasks, **options):
    with app.app_context():
        return AsyncTaskService().submit_workflow(tasks=tasks, **options)


def diamond():
    return [{"key": "a", "task_type": "WF_ADD"}, {"key": "b", "task_type": "WF_ADD", "after": ["a"]},
            {"key": "c", "task_type": "WF_ADD", "after": ["a"]},
            {"key": "d", "task_type": "WF_ADD", "after": ["b", "c"]}]


def test_the_list_shows_name_status_and_progress_and_filters(app):
    submitted = submit(app, diamond(), name="reports")
    submit(app, [{"key": "x", "task_type": "WF_ADD"}], name="elsewhere")
    client, _ = logged_in_client(app, "viewer")
    page = client.get("/workflows?name=reports").get_data(as_text=True)
    assert f'id="workflow-{submitted.workflow_id}"' in page and "0 / 4 done" in page and "elsewhere" not in page
    assert 'hx-trigger="every 3s"' in page  # something runs: the rows refresh
    assert 'href="/workflows"' in client.get("/").get_data(as_text=True)  # in the navigation
    assert "unknown status" in client.get("/workflows?status=NOPE").get_data(as_text=True)


def test_the_page_draws_the_graph_left_to_right_and_polls_only_while_it_can_change(app):
    submitted = submit(app, diamond(), name="drawn",
                       callbacks={"on_finish": {"task_type": "WF_CALLBACK", "payload": {}}})
    client, _ = logged_in_client(app, "viewer")
    page = client.get(f"/workflows/{submitted.workflow_id}").get_data(as_text=True)
    assert "<svg" in page and page.count("marker-end=") == 4  # a->b, a->c, b->d, c->d
    xs = {key: int(x) for key, x in re.findall(r'id="node-(\w)"[^>]*>\s*<title>[^<]*</title>\s*<rect x="(\d+)"', page)}
    assert xs["a"] < xs["b"] == xs["c"] < xs["d"]
    assert re.search(r'id="node-a" data-status="PENDING" data-task-id="\d+"', page)
    assert re.search(r'id="node-d" data-status="WAITING"', page)
    assert f'href="/tasks/{submitted.task_ids["d"]}"' in page
    assert 'hx-trigger="load delay:1s"' in page
    fragment = client.get(f"/workflows/{submitted.workflow_id}", headers=htmx("workflow-live")).get_data(as_text=True)
    assert fragment.lstrip().startswith('<div id="workflow-live"') and "<html" not in fragment
    with app.app_context():
        service = AsyncTaskService()
        service.cancel_workflow(submitted.workflow_id, actor="ops")  # ends everything: on_finish is queued
        service.cancel_task(workflow_detail(db.session, submitted.workflow_id).callbacks[0].id, "ops")
    done = client.get(f"/workflows/{submitted.workflow_id}", headers=htmx("workflow-live")).get_data(as_text=True)
    assert 'hx-trigger="none"' in done and 'data-status="CANCELLED"' in done


def test_a_large_workflow_is_grouped_by_type_and_status(app):
    tasks = [{"key": f"t{i}", "task_type": "WF_ADD" if i % 2 else "NOOP"} for i in range(201)]
    submitted = submit(app, tasks)
    client, _ = logged_in_client(app, "viewer")
    page = client.get(f"/workflows/{submitted.workflow_id}").get_data(as_text=True)
    assert "<svg" not in page and 'id="workflow-groups"' in page
    assert re.search(r"<td>WF_ADD</td><td>100</td>", page) and re.search(r"<td>NOOP</td><td>101</td>", page)


def test_operators_cancel_and_retry_from_the_page_and_it_is_audited(app):
    submitted = submit(app, diamond())
    viewer, viewer_csrf = logged_in_client(app, "viewer")
    assert 'id="cancel-workflow"' not in viewer.get(f"/workflows/{submitted.workflow_id}").get_data(as_text=True)
    assert viewer.post(f"/workflows/{submitted.workflow_id}/cancel", data={"csrf_token": viewer_csrf}).status_code == 403
    client, csrf = logged_in_client(app, "operator")
    page = client.get(f"/workflows/{submitted.workflow_id}").get_data(as_text=True)
    assert 'id="cancel-workflow"' in page and "data-confirm=" in page  # asked before it posts (console.js)
    answer = client.post(f"/workflows/{submitted.workflow_id}/cancel", data={"csrf_token": csrf})
    assert answer.status_code == 303
    after = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "4 tasks that had not started" in after and 'data-status="CANCELLED"' in after
    refused = client.post(f"/workflows/{submitted.workflow_id}/cancel", data={"csrf_token": csrf})
    assert refused.status_code == 409 and "cannot cancel workflow" in refused.get_data(as_text=True)
    assert client.post(f"/workflows/{submitted.workflow_id}/retry", data={"csrf_token": csrf}).status_code == 303
    with app.app_context():
        audited = db.session.execute(select(AuditEntry.action, AuditEntry.outcome, AuditEntry.actor)
                                     .where(AuditEntry.target_type == "workflow")
                                     .order_by(AuditEntry.id)).all()
        assert [tuple(a) for a in audited] == [("workflow.cancel", "ok", "operator-user"),
                                               ("workflow.cancel", "refused", "operator-user"),
                                               ("workflow.retry", "ok", "operator-user")]


def test_a_task_page_shows_its_workflow_parents_and_children(app):
    submitted = submit(app, diamond(), name="family")
    client, _ = logged_in_client(app, "viewer")
    page = client.get(f"/tasks/{submitted.task_ids['b']}").get_data(as_text=True)
    assert 'id="task-workflow"' in page and "family" in page
    parents = re.search(r'id="task-parents">(.*?)</td>', page, re.S).group(1)
    children = re.search(r'id="task-children">(.*?)</td>', page, re.S).group(1)
    assert f'href="/tasks/{submitted.task_ids["a"]}"' in parents and ">a<" in parents
    assert f'href="/tasks/{submitted.task_ids["d"]}"' in children and 'data-status="WAITING"' in children
    with app.app_context():
        lone = AsyncTaskService().submit_task("NOOP", {}).id
    assert 'id="task-workflow"' not in client.get(f"/tasks/{lone}").get_data(as_text=True)
