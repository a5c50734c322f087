"""History in the console and in /metrics: charts for every range, a task type's page, the same figures
as Prometheus series (SQLite and PostgreSQL). Real tasks run through the service; the aggregation
is the consumers' job, called here directly."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from tests.console_support import htmx, logged_in_client
from tests.test_history import M, reset_history, write_scenario
from webapp.console.history_charts import history_charts
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.consumer import Consumer
from webapp.tasks.history import SETTLE, HistoryWriter, aggregate_history
from webapp.tasks.history_models import TaskStatMark
from webapp.tasks.history_query import RANGES, HistorySeries
from webapp.tasks.history_sql import StatFigures
from webapp.tasks.models import utcnow

OPEN_METRICS = {"ASYNC_TASK_METRICS_PUBLIC": True, "ASYNC_TASK_METRICS_CACHE_SECONDS": 0.001}


@pytest.fixture
def app(make_app, backend) -> Flask:
    return make_app(backend, **OPEN_METRICS)


def run_tasks_and_aggregate(app: Flask) -> None:
    """Two NOOP tasks succeed and one FATAL fails, then one aggregation run once their minute has ended."""
    with app.app_context():
        reset_history()
        service = AsyncTaskService()
        for task_type in ("NOOP", "NOOP", "FATAL"):
            service.submit_task(task_type, {})
        for claimed in service.claim_due_tasks("test-worker", 10, ["NOOP", "FATAL"]):
            result = (TaskResult.failure("boom", retryable=False) if claimed.task_type == "FATAL"
                      else TaskResult.success({}))
            service.finish_task(claimed, result, worker_id="test-worker")
        HistoryWriter().run(utcnow() + timedelta(minutes=1) + SETTLE)  # their minute has ended and settled


TABLE_ROW = re.compile(r'<tr><td>[^<]*</td><td class="num">(\d+)</td><td class="num">(\d+)</td>'
                       r'<td class="num">(\d+)</td><td class="num">(\d+)</td>')


@pytest.mark.parametrize("key", list(RANGES))
def test_history_charts_render_for_every_range(app: Flask, key: str) -> None:
    run_tasks_and_aggregate(app)
    client, _ = logged_in_client(app, "viewer")
    fragment = client.get(f"/history?range={key}", headers=htmx("history"))
    assert fragment.status_code == 200
    html = fragment.text
    assert html.lstrip().startswith('<section id="history"') and f'data-range="{key}"' in html
    assert re.search(rf'id="range-{key}"[^>]*\s+aria-current="true"', html)
    for chart in ("history-counts", "history-run", "history-wait"):
        assert f'<svg id="{chart}"' in html
    svg_label = re.search(r'<svg id="history-counts"[^>]*aria-label="([^"]+)"', html)
    assert svg_label and "3 started, 2 succeeded, 1 failed, 0 retried" in svg_label.group(1)
    assert "<polyline" in html and "<title>" in html
    rows = TABLE_ROW.findall(html[html.index('id="history-figures"'):])  # one bar, or two if a minute ended
    assert rows and [sum(int(row[column]) for row in rows) for column in range(4)] == [3, 2, 1, 0]
    assert 'id="queue-latency"' in html and ">NOOP</a>" in html
    page = client.get(f"/history?range={key}")
    assert page.status_code == 200 and "<html" in page.text and '<svg id="history-counts"' in page.text


def test_the_overview_loads_the_history_and_a_bad_range_is_refused(app: Flask) -> None:
    client, _ = logged_in_client(app, "viewer")
    overview = client.get("/").text
    assert re.search(r'<section id="history"[^>]*hx-get="/history\?range=1h"[^>]*hx-trigger="load"', overview)
    refused = client.get("/history?range=2h")
    assert refused.status_code == 400 and "range" in refused.text and "1h, 24h, 7d, 30d" in refused.text


def test_task_type_page_shows_its_latency_and_its_history(app: Flask) -> None:
    run_tasks_and_aggregate(app)
    with app.app_context():
        AsyncTaskService().submit_task("NOOP", {})  # due now: the queue latency has a value
    client, _ = logged_in_client(app, "viewer")
    page = client.get("/task-types/FATAL?range=24h")
    assert page.status_code == 200
    html = page.text
    assert "<h1>FATAL</h1>" in html and 'id="type-latency"' in html and "none waiting" in html
    label = re.search(r'<svg id="history-counts"[^>]*aria-label="([^"]+)"', html)
    assert label and "1 started, 0 succeeded, 1 failed" in label.group(1)
    assert 'hx-get="/history?range=7d&amp;task_type=FATAL"' in html
    noop = client.get("/task-types/NOOP").text
    assert "none waiting" not in noop.split('id="type-latency"')[1].split("</div>")[0]
    assert client.get("/task-types/NO_SUCH_TYPE").status_code == 404
    refused = client.get("/task-types/FATAL?range=forever", headers=htmx("history"))
    assert refused.status_code == 400 and "range" in refused.text and refused.headers["HX-Retarget"] == "#messages"
    assert client.get("/history?task_type=NO_SUCH_TYPE").status_code == 404
    listing = client.get("/task-types").text
    assert 'href="/task-types/FATAL"' in listing


def test_metrics_report_the_last_minute_per_type(app: Flask) -> None:
    with app.app_context():
        reset_history()
        write_scenario()  # tests/test_history.py: alpha's five runs in minute M, beta's retry
        HistoryWriter().run(M + timedelta(minutes=1, seconds=30))  # M is the last minute aggregated
    samples = {}
    for family in text_string_to_metric_families(app.test_client().get("/metrics").text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def alpha(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted({"task_type": "alpha", **labels}.items()))))

    assert [alpha("taskdeck_history_tasks", event=e) for e in ("started", "succeeded", "failed", "retried")] == \
        [5, 5, 0, 0]
    assert alpha("taskdeck_history_run_seconds", quantile="0.5") == pytest.approx(0.3)
    assert alpha("taskdeck_history_run_seconds", quantile="0.95") == pytest.approx(8.08)
    assert alpha("taskdeck_history_run_seconds", quantile="1") == pytest.approx(10.0)
    assert alpha("taskdeck_history_wait_seconds", quantile="0.95") == pytest.approx(4.8)
    assert samples[("taskdeck_history_tasks", (("event", "retried"), ("task_type", "beta")))] == 1
    assert samples[("taskdeck_history_minute_timestamp_seconds", ())] == M.timestamp()


def test_a_gap_splits_a_time_line_and_a_lone_point_is_a_dot(make_app) -> None:
    app = make_app("sqlite")
    chosen = RANGES["1h"]
    start = utcnow().replace(second=0, microsecond=0) - chosen.span
    timed = {0: 100.0, 1: 200.0, 3: 50.0, 5: 80.0, 6: 90.0}  # steps 2 and 4 timed nothing
    points = [StatFigures("NOOP", start + index * chosen.step, started=1, run_count=1 if index in timed else 0,
                          run_p50_ms=timed.get(index), run_p95_ms=timed.get(index))
              for index in range(chosen.bars)]
    with app.test_request_context():
        counts, runs, _waits = history_charts(HistorySeries(chosen, "NOOP", start, points))
    p50 = runs.lines[0]
    assert len(p50.segments) == 2 and len(p50.dots) == 1  # 0-1, 5-6 drawn as lines; 3 alone
    assert [tick for _, tick in runs.y_ticks] == ["0 ms", "100 ms", "200 ms"]
    assert [tick for _, tick in counts.y_ticks] == ["0", "1"]  # a count axis has no "0.5"
    assert len(counts.lines[0].segments) == 1 and counts.lines[0].segments[0].count(",") == chosen.bars


def test_a_task_type_page_marks_task_types_as_current(make_app) -> None:
    app = make_app("sqlite")
    client, _ = logged_in_client(app, "viewer")
    html = client.get("/task-types/NOOP").text
    current = re.findall(r'<a href="([^"]+)" aria-current="page">', html)
    assert current == ["/task-types"], current


def test_every_consumer_schedules_the_minute_job_and_the_job_writes_the_mark(make_app) -> None:
    app = make_app("sqlite")
    consumer = Consumer(app, concurrency=1).start()
    try:
        job = consumer._scheduler.get_job("history") if consumer._scheduler else None
        assert job is not None and "second='10'" in str(job.trigger)
    finally:
        consumer.stop(grace=2)
    aggregate_history(app)  # what the job runs: its own app context, errors logged
    with app.app_context():
        assert db.session.scalar(select(TaskStatMark.next_minute)) is not None
