"""Workflows on both databases: order, parents' results, failure policies, cancel, retry, callbacks."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests import workflow_processors as wp
from tests.conftest import wait_until
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.consumer import Consumer
from webapp.tasks.models import AsyncTask, TaskEvent
from webapp.workflows.models import Workflow
from webapp.workflows.queries import workflow_detail

PROCESSORS = ["tests.processors", "tests.workflow_processors"]


@pytest.fixture(autouse=True)
def clear_seen():
    wp.SEEN.clear()
    wp.FLAGS.clear()
    yield


@pytest.fixture
def app(make_app, backend):
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def statuses(app, workflow_id):
    """Task status by key, plus the workflow's own status under '*'."""
    with app.app_context():
        detail = workflow_detail(db.session, workflow_id)
        found = {t.key: t.status for t in detail.tasks + detail.callbacks}
        found["*"] = detail.workflow.status
        db.session.rollback()
        return found


def diamond(**extra):
    return [{"key": "a", "task_type": "WF_ADD", "payload": {"n": 1}},
            {"key": "b", "task_type": "WF_ADD", "payload": {"n": 10}, "after": ["a"]},
            {"key": "c", "task_type": extra.get("c_type", "WF_ADD"), "payload": {"n": 100}, "after": ["a"]},
            {"key": "d", "task_type": "WF_ADD", "payload": {"n": 1000}, "after": ["b", "c"]}]


def test_a_diamond_runs_in_order_and_d_sees_b_and_c(app):
    with app.app_context():
        submitted = AsyncTaskService().submit_workflow(
            tasks=diamond(), name="diamond",
            callbacks={"on_success": {"task_type": "WF_CALLBACK", "payload": {}},
                       "on_finish": {"task_type": "WF_CALLBACK", "payload": {}},
                       "on_failure": {"task_type": "WF_CALLBACK", "payload": {}}})
        assert set(submitted.task_ids) == {"a", "b", "c", "d"}
        waiting = db.session.get(AsyncTask, submitted.task_ids["d"])
        assert (waiting.status, waiting.pending_parents) == ("WAITING", 2)
        db.session.rollback()
    Consumer(app, concurrency=3).start()
    wait_until(lambda: statuses(app, submitted.workflow_id).get("@on_finish") == "SUCCESS", timeout=20,
               message="the workflow and its callbacks to finish")
    found = statuses(app, submitted.workflow_id)
    assert found == {"a": "SUCCESS", "b": "SUCCESS", "c": "SUCCESS", "d": "SUCCESS", "*": "SUCCEEDED",
                     "@on_success": "SUCCESS", "@on_finish": "SUCCESS"}
    order = wp.seen_keys()
    assert order[0] == "a" and set(order[1:3]) == {"b", "c"} and order[3] == "d"
    seen_by_d = next(parents for key, parents, _ in wp.SEEN if key == "d")
    assert seen_by_d == {"b": {"sum": 11}, "c": {"sum": 101}}
    summary = next(s for key, _, s in wp.SEEN if key == "@on_success")
    assert summary["total"] == 4 and summary["counts"]["SUCCESS"] == 4 and summary["failed_keys"] == []
    assert summary["results"]["d"] == {"sum": 1112}
    with app.app_context():
        d_events = db.session.scalars(select(TaskEvent.kind).where(
            TaskEvent.task_id == submitted.task_ids["d"]).order_by(TaskEvent.id)).all()
        assert d_events[:2] == ["SUBMITTED", "UNBLOCKED"]


def test_a_failure_cancels_what_depends_on_it_by_default(app):
    with app.app_context():
        submitted = AsyncTaskService().submit_workflow(
            tasks=diamond(c_type="WF_FAIL"),
            callbacks={"on_failure": {"task_type": "WF_CALLBACK", "payload": {}},
                       "on_success": {"task_type": "WF_CALLBACK", "payload": {}}})
    Consumer(app, concurrency=2).start()
    wait_until(lambda: statuses(app, submitted.workflow_id).get("@on_failure") == "SUCCESS", timeout=20,
               message="the on_failure callback")
    found = statuses(app, submitted.workflow_id)
    assert found == {"a": "SUCCESS", "b": "SUCCESS", "c": "FAILURE", "d": "CANCELLED", "*": "FAILED",
                     "@on_failure": "SUCCESS"}
    summary = next(s for key, _, s in wp.SEEN if key == "@on_failure")
    assert summary["failed_keys"] == ["c"] and summary["counts"]["CANCELLED"] == 1
    assert "d" not in wp.seen_keys()


def test_under_wait_a_failure_holds_its_dependents_until_an_operator_retries_it(app):
    with app.app_context():
        submitted = AsyncTaskService().submit_workflow(
            tasks=diamond(c_type="WF_FAIL"), on_failure="wait",
            callbacks={"on_failure": {"task_type": "WF_CALLBACK", "payload": {}},
                       "on_success": {"task_type": "WF_CALLBACK", "payload": {}}})
    Consumer(app, concurrency=2).start()
    wait_until(lambda: statuses(app, submitted.workflow_id).get("@on_failure") == "SUCCESS", timeout=20,
               message="the on_failure callback of a stalled workflow")
    found = statuses(app, submitted.workflow_id)
    assert (found["c"], found["d"], found["*"]) == ("FAILURE", "WAITING", "FAILED")
    wp.FLAGS["fixed"] = True
    with app.app_context():
        AsyncTaskService().retry_task(submitted.task_ids["c"], actor="ops")
    wait_until(lambda: statuses(app, submitted.workflow_id).get("@on_success") == "SUCCESS", timeout=20,
               message="the workflow to resume and succeed")
    found = statuses(app, submitted.workflow_id)
    assert (found["c"], found["d"], found["*"]) == ("SUCCESS", "SUCCESS", "SUCCEEDED")
    assert wp.seen_keys().count("@on_failure") == 1


def test_cancel_then_retry_a_workflow(app):
    with app.app_context():
        service = AsyncTaskService()
        service.pause_task_type("WF_ADD", actor="ops")  # nothing starts: everything is cancellable
        submitted = service.submit_workflow(
            tasks=diamond(), callbacks={"on_finish": {"task_type": "WF_CALLBACK", "payload": {}}})
        assert service.cancel_workflow(submitted.workflow_id, actor="ops") == 4
    found = statuses(app, submitted.workflow_id)
    assert {found[k] for k in "abcd"} == {"CANCELLED"} and found["*"] == "CANCELLED"
    assert found["@on_finish"] == "PENDING"  # everything ended: on_finish fires once
    with app.app_context():
        service = AsyncTaskService()
        with pytest.raises(Exception, match="cannot cancel workflow"):
            service.cancel_workflow(submitted.workflow_id, actor="ops")
        assert service.retry_workflow(submitted.workflow_id, actor="ops") == 4
        service.resume_task_type("WF_ADD", actor="ops")
    found = statuses(app, submitted.workflow_id)
    assert (found["a"], found["b"], found["d"], found["*"]) == ("PENDING", "WAITING", "WAITING", "RUNNING")
    Consumer(app, concurrency=2).start()
    wait_until(lambda: statuses(app, submitted.workflow_id)["*"] == "SUCCEEDED", timeout=20,
               message="the retried workflow to succeed")
    assert wp.seen_keys().count("@on_finish") == 1  # exactly once, though the workflow ended twice
    with app.app_context():
        actions = db.session.scalars(select(func.count()).select_from(TaskEvent).where(
            TaskEvent.task_id == submitted.task_ids["d"], TaskEvent.kind == "RETRIED")).one()
        assert actions == 1


def test_a_batch_with_callbacks_is_fan_out_fan_in(app):
    with app.app_context():
        submitted = AsyncTaskService().submit_workflow(
            tasks=[{"key": f"t{i}", "task_type": "WF_ADD", "payload": {"n": i}} for i in range(20)],
            name="batch", callbacks={"on_finish": {"task_type": "WF_CALLBACK", "payload": {}}})
    Consumer(app, concurrency=4).start()
    wait_until(lambda: statuses(app, submitted.workflow_id).get("@on_finish") == "SUCCESS", timeout=20,
               message="the batch's callback")
    summary = next(s for key, _, s in wp.SEEN if key == "@on_finish")
    assert summary["total"] == 20 and sorted(r["sum"] for r in summary["results"].values()) == list(range(20))
    with app.app_context():
        workflow = db.session.get(Workflow, submitted.workflow_id)
        assert (workflow.status, workflow.succeeded, workflow.finished_at is not None) == ("SUCCEEDED", 20, True)


def test_an_operator_cancelling_a_task_cancels_what_waits_for_it_under_either_policy(app):
    for policy in ("cancel_dependents", "wait"):
        with app.app_context():
            service = AsyncTaskService()
            submitted = service.submit_workflow(
                tasks=diamond(), on_failure=policy,
                callbacks={"on_finish": {"task_type": "WF_CALLBACK", "payload": {}},
                           "on_failure": {"task_type": "WF_CALLBACK", "payload": {}}})
            service.cancel_task(submitted.task_ids["a"], actor="ops")  # PENDING: cancelled at once
        found = statuses(app, submitted.workflow_id)
        # A cancelled task never succeeds: everything after it ends too, and no failure means no on_failure.
        assert found == {"a": "CANCELLED", "b": "CANCELLED", "c": "CANCELLED", "d": "CANCELLED",
                         "*": "CANCELLED", "@on_finish": "PENDING"}, policy
        with app.app_context():
            events = db.session.scalars(select(TaskEvent.message).where(
                TaskEvent.task_id == submitted.task_ids["d"], TaskEvent.kind == "CANCELLED")).all()
            assert events == ["a task it depends on did not succeed"]
