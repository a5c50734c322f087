"""The history's figures in ``/metrics``: the last aggregated minute of each task type.

Read from ``task_stat`` (one index read of one minute's rows), never from the task table. Queue
latency per type is ``taskdeck_queue_lag_seconds`` (``metrics.py``), read now.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy.orm import Session

from .tasks.history_query import LastMinute, last_minute

COUNTS = ("started", "succeeded", "failed", "retried")


def history_families(last: LastMinute) -> Iterator[Metric]:
    """Gauges of the minute ``last`` describes (empty families before the first aggregation)."""
    tasks = GaugeMetricFamily("taskdeck_history_tasks",
                              "Tasks started, succeeded, failed and retried during the last aggregated minute.",
                              labels=["task_type", "event"])
    runs = GaugeMetricFamily("taskdeck_history_run_seconds",
                             "Run time of the attempts that ended in the last aggregated minute, by quantile "
                             "(1 = the longest).", labels=["task_type", "quantile"])
    waits = GaugeMetricFamily("taskdeck_history_wait_seconds",
                              "Wait from due to start of the tasks started in the last aggregated minute, "
                              "by quantile.", labels=["task_type", "quantile"])
    for figures in last.figures:
        for event in COUNTS:
            tasks.add_metric([figures.task_type, event], getattr(figures, event))
        for quantile, value in (("0.5", figures.run_p50_ms), ("0.95", figures.run_p95_ms), ("1", figures.run_max_ms)):
            if value is not None:
                runs.add_metric([figures.task_type, quantile], value / 1000.0)
        for quantile, value in (("0.5", figures.wait_p50_ms), ("0.95", figures.wait_p95_ms)):
            if value is not None:
                waits.add_metric([figures.task_type, quantile], value / 1000.0)
    minute = GaugeMetricFamily("taskdeck_history_minute_timestamp_seconds",
                               "Start of the last aggregated minute (Unix time; 0 before the first aggregation).")
    minute.add_metric([], last.minute.timestamp() if last.minute is not None else 0.0)
    yield from (tasks, runs, waits, minute)


class HistoryCollector:
    """A Prometheus collector over the last minute read at scrape time."""

    def __init__(self, session: Session | None = None) -> None:
        self.last = last_minute(session)

    def collect(self) -> Iterator[Metric]:
        return history_families(self.last)
