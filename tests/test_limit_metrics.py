"""``/metrics`` flow-control figures (webapp/limit_metrics.py) read back with Prometheus' parser, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from webapp.extensions import db
from webapp.tasks import AsyncTaskService

PROCESSORS = ["tests.processors", "tests.limit_processors"]
OPEN = {"ASYNC_TASK_METRICS_PUBLIC": True, "ASYNC_TASK_METRICS_CACHE_SECONDS": 0.001}


@pytest.fixture
def limited_app(make_app, backend):
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS, **OPEN)


def _samples(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples}


def _value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_waiting_tasks_and_saturation_per_limit(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        for customer in (42, 42, 42, 7):
            service.submit_task("PER_CUSTOMER", {"customer_id": customer})
        for n in range(5):
            service.submit_task("RATED", {"n": n})
        service.submit_task("NOOP", {})
        claimed = service.claim_due_tasks("metrics-worker", 50)
        assert sorted(t.task_type for t in claimed).count("PER_CUSTOMER") == 3
        db.session.remove()
    samples = _samples(limited_app.test_client())
    assert _value(samples, "taskdeck_limit_waiting_tasks", task_type="PER_CUSTOMER") == 1
    assert _value(samples, "taskdeck_limit", task_type="PER_CUSTOMER", limit="concurrency") == 2
    assert _value(samples, "taskdeck_limit_in_use", task_type="PER_CUSTOMER", limit="concurrency") == 2
    assert _value(samples, "taskdeck_limit_saturation", task_type="PER_CUSTOMER", limit="concurrency") == 1.0
    assert _value(samples, "taskdeck_limit_keys_at_limit", task_type="PER_CUSTOMER") == 1  # 42, not 7
    assert _value(samples, "taskdeck_limit_waiting_tasks", task_type="RATED") == 2
    assert _value(samples, "taskdeck_limit_in_use", task_type="RATED", limit="rate") == 3
    assert _value(samples, "taskdeck_limit_saturation", task_type="RATED", limit="rate") == 1.0
    assert _value(samples, "taskdeck_limit_saturation", task_type="RATED_PER_TENANT", limit="rate") == 0.0
    assert _value(samples, "taskdeck_limit_waiting_tasks", task_type="NOOP") is None  # no limit, no series
