"""``/metrics``: Prometheus text read back with Prometheus' own parser, on SQLite and PostgreSQL.

Tasks are run by a real consumer; the figures are then compared with what was submitted. The
cross-process side (the same numbers from every gunicorn worker) is in tests/test_gunicorn.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from tests.conftest import wait_until
from webapp.extensions import db
from webapp.metrics import DURATION_BUCKETS
from webapp.tasks import AsyncTaskService
from webapp.tasks.consumer import Consumer
from webapp.tasks.models import AsyncTask, utcnow

# /metrics needs a token unless opened explicitly; these tests read it open and fresh each time.
OPEN = {"ASYNC_TASK_METRICS_PUBLIC": True, "ASYNC_TASK_METRICS_CACHE_SECONDS": 0.001}


@pytest.fixture
def app(make_app, backend):
    """An app on each backend with /metrics opened explicitly and never served from its cache."""
    return make_app(backend, **OPEN)


def scrape(client, **headers) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and index every sample by (name, sorted labels)."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_task_counts_totals_and_durations_match_what_ran(app):
    with app.app_context():
        service = AsyncTaskService()
        ok = [service.submit_task("NOOP", {"i": i}).id for i in range(3)]
        slow = service.submit_task("SLEEP", {"seconds": 0.3}).id
        bad = [service.submit_task("FATAL", {}).id for _ in range(2)]
    consumer = Consumer(app, concurrency=3).start()
    every = [*ok, slow, *bad]
    wait_until(lambda: finished(app, every), timeout=20, message="all tasks finished")
    samples = scrape(app.test_client())
    consumer.stop(grace=2)

    assert value(samples, "taskdeck_tasks", task_type="NOOP", status="SUCCESS") == 3
    assert value(samples, "taskdeck_tasks", task_type="FATAL", status="FAILURE") == 2
    assert value(samples, "taskdeck_tasks_processed_total", task_type="NOOP") == 3
    assert value(samples, "taskdeck_tasks_processed_total", task_type="FATAL") == 2
    assert value(samples, "taskdeck_tasks_failed_total", task_type="FATAL") == 2
    assert value(samples, "taskdeck_tasks_failed_total", task_type="NOOP") == 0
    assert value(samples, "taskdeck_task_attempts_total", task_type="NOOP") == 3

    # The 0.3 s task lands above the 0.25 s bucket and within the 0.5 s one; buckets accumulate.
    sleep = {"task_type": "SLEEP", "status": "SUCCESS"}
    assert value(samples, "taskdeck_task_duration_seconds_count", **sleep) == 1
    assert value(samples, "taskdeck_task_duration_seconds_bucket", le="0.25", **sleep) == 0
    assert value(samples, "taskdeck_task_duration_seconds_bucket", le="0.5", **sleep) == 1
    assert 0.3 <= value(samples, "taskdeck_task_duration_seconds_sum", **sleep) < 0.5
    noop = {"task_type": "NOOP", "status": "SUCCESS"}
    counts = [value(samples, "taskdeck_task_duration_seconds_bucket", le=str(b), **noop) for b in DURATION_BUCKETS]
    assert counts == sorted(counts)
    assert value(samples, "taskdeck_task_duration_seconds_bucket", le="+Inf", **noop) == 3

    # The consumer heartbeated while it ran; after its stop its row says STOPPED.
    assert value(samples, "taskdeck_workers_online") == 1
    assert value(samples, "taskdeck_worker_threads") == 3
    after = scrape(app.test_client())
    assert value(after, "taskdeck_workers_online") == 0
    assert value(after, "taskdeck_workers", status="STOPPED") == 1


def finished(app, ids) -> bool:
    with app.app_context():
        service = AsyncTaskService()
        return all(service.get_task(i).status in ("SUCCESS", "FAILURE") for i in ids)


def test_queue_lag_is_the_age_of_the_oldest_due_task(app):
    with app.app_context():
        service = AsyncTaskService()
        old = service.submit_task("NOOP", {}).id
        service.submit_task("NOOP", {})
        service.submit_task("NOOP", {}, run_at=utcnow() + timedelta(hours=1))  # waiting, not due
        # Backdate one task's due time as if it had waited two minutes for a worker.
        db.session.execute(update(AsyncTask).where(AsyncTask.id == old)
                           .values(next_run_at=utcnow() - timedelta(seconds=120)))
        db.session.commit()
    samples = scrape(app.test_client())
    assert value(samples, "taskdeck_tasks_due", task_type="NOOP") == 2
    assert value(samples, "taskdeck_tasks", task_type="NOOP", status="PENDING") == 3
    lag = value(samples, "taskdeck_queue_lag_seconds", task_type="NOOP")
    assert 119 <= lag < 180
    assert value(samples, "taskdeck_queue_lag_max_seconds") == lag
    assert value(samples, "taskdeck_workers_online") == 0

    with app.app_context():
        AsyncTaskService().pause_task_type("NOOP", actor="ops")
    paused = scrape(app.test_client())
    assert value(paused, "taskdeck_task_type_paused", task_type="NOOP") == 1
    assert value(paused, "taskdeck_queue_lag_max_seconds") == 0  # a paused type is not lagging


def test_empty_database_gives_zeros(app):
    samples = scrape(app.test_client())
    assert value(samples, "taskdeck_queue_lag_max_seconds") == 0
    assert value(samples, "taskdeck_workers_online") == 0
    assert not [key for key in samples if key[0] == "taskdeck_tasks"]


def test_notifications_by_status(make_app):
    app = make_app("sqlite", MAIL_SERVER="127.0.0.1", MAIL_PORT=1, **OPEN)  # refused: stays PENDING (retry)
    with app.app_context():
        ids = [AsyncTaskService().submit_task("NOOP", {}, created_by=f"user{i}@example.com").id for i in range(2)]
    consumer = Consumer(app, concurrency=2).start()
    wait_until(lambda: finished(app, ids), message="tasks finished")
    wait_until(lambda: notification_total(scrape(app.test_client())) == 2, message="two notifications")
    consumer.stop(grace=2)
    samples = scrape(app.test_client())
    assert value(samples, "taskdeck_notifications", type="EMAIL", status="PENDING") == 2


def notification_total(samples) -> float:
    return sum(v for (name, _), v in samples.items() if name == "taskdeck_notifications")


def test_label_values_are_escaped(make_app):
    """A task type with quotes, backslashes and a newline cannot break the exposition."""
    app = make_app("sqlite", **OPEN)
    with app.app_context():
        service = AsyncTaskService()
        task_id = service.submit_task("NOOP", {}).id
        db.session.execute(update(AsyncTask).where(AsyncTask.id == task_id)
                           .values(task_type='we"ird\\type\nname'))
        db.session.commit()
    samples = scrape(app.test_client())
    assert value(samples, "taskdeck_tasks", task_type='we"ird\\type\nname', status="PENDING") == 1


@pytest.mark.parametrize("header, status", [
    (None, 401),
    ("Bearer wrong-token", 401),
    ("Basic c2VjcmV0", 401),
    ("Bearer metrics-secret", 200),
    ("bearer metrics-secret", 200),
])
def test_token_protects_metrics_when_configured(make_app, header, status):
    app = make_app("sqlite", ASYNC_TASK_METRICS_TOKEN="metrics-secret")
    headers = {"Authorization": header} if header else {}
    response = app.test_client().get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"taskdeck_" not in response.data
    # Liveness and readiness stay open for probes either way.
    assert app.test_client().get("/healthz").status_code == 200


def test_a_duration_exactly_on_a_bound_counts_in_that_bucket(make_app):
    """Prometheus buckets are inclusive (``le``): 0.25 s belongs to ``le="0.25"``."""
    app = make_app("postgres", **OPEN)
    with app.app_context():
        service = AsyncTaskService()
        ids = [service.submit_task("NOOP", {}).id for _ in range(3)]
        started = utcnow().replace(microsecond=0)
        for task_id, seconds in zip(ids, (0.25, 1.0, 5000.0), strict=True):
            db.session.execute(update(AsyncTask).where(AsyncTask.id == task_id).values(
                status="SUCCESS", started_at=started, finished_at=started + timedelta(seconds=seconds)))
        db.session.commit()
    samples = scrape(app.test_client())
    labels = {"task_type": "NOOP", "status": "SUCCESS"}
    bucket = {le: value(samples, "taskdeck_task_duration_seconds_bucket", le=le, **labels)
              for le in ("0.1", "0.25", "0.5", "1.0", "3600.0", "+Inf")}
    assert bucket == {"0.1": 0, "0.25": 1, "0.5": 1, "1.0": 2, "3600.0": 2, "+Inf": 3}
    assert value(samples, "taskdeck_task_duration_seconds_sum", **labels) == 5001.25
