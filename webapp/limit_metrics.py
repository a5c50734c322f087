"""Prometheus figures of flow control: per limited task type, how full its limits are and what waits.

Served with the rest of ``/metrics`` (``metrics.render_metrics`` registers ``LimitCollector``),
read from the database like every other figure, so every web process reports the same numbers.
A keyed limit is as full as its busiest key: saturation 1 means at least one key is at its
limit and its next tasks wait. The figures come from ``AsyncTaskService.limits_overview`` (a
few queries per limited type) plus one grouped count of rate-window starts per key.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .tasks.limit_models import TaskLimitStart
from .tasks.service import AsyncTaskService

PREFIX = "taskdeck"


def _busiest_rate_key(service: AsyncTaskService, item: dict[str, Any]) -> int:
    """Starts in the current window of the type's busiest rate key (the whole type when unkeyed)."""
    since = service.db_now() - timedelta(seconds=item["rate"]["per_seconds"])
    per_key = (select(func.count().label("n")).select_from(TaskLimitStart)
               .where(TaskLimitStart.task_type == item["task_type"], TaskLimitStart.started_at > since)
               .group_by(TaskLimitStart.rate_key).subquery())
    return int(service.session.scalar(select(func.max(per_key.c.n))) or 0)


def limit_families(session: Session | None = None) -> Iterator[Metric]:
    """Waiting tasks, limit, busiest key in use, saturation and keys at the limit, per limited type."""
    service = AsyncTaskService(session=session)  # None: the app's session
    waiting = GaugeMetricFamily(f"{PREFIX}_limit_waiting_tasks",
                                "PENDING and RETRYING tasks of a task type with a concurrency or rate limit.",
                                labels=["task_type"])
    limit = GaugeMetricFamily(f"{PREFIX}_limit", "The limit in force (overrides included): concurrent "
                              "tasks, or starts per window.", labels=["task_type", "limit"])
    in_use = GaugeMetricFamily(f"{PREFIX}_limit_in_use", "Of the busiest key: tasks PROCESSING "
                               "(concurrency) or starts in the current window (rate).", labels=["task_type", "limit"])
    saturation = GaugeMetricFamily(f"{PREFIX}_limit_saturation", "In use / limit of the busiest key "
                                   "(1: at the limit, its next tasks wait).", labels=["task_type", "limit"])
    full_keys = GaugeMetricFamily(f"{PREFIX}_limit_keys_at_limit",
                                  "Concurrency keys with as many tasks PROCESSING as the limit allows.",
                                  labels=["task_type"])
    for item in service.limits_overview():
        task_type = item["task_type"]
        figures = []
        if item["concurrency"] is not None:
            busiest = max((key["running"] for key in item["running"]), default=0)
            figures.append(("concurrency", item["concurrency"], busiest))
            full_keys.add_metric([task_type], sum(1 for key in item["running"]
                                                  if key["running"] >= item["concurrency"]))
        if item["rate"] is not None:
            figures.append(("rate", item["rate"]["count"], _busiest_rate_key(service, item)))
        if not figures:
            continue  # a time limit only: nothing waits on it
        waiting.add_metric([task_type], item["waiting"])
        for kind, ceiling, used in figures:
            limit.add_metric([task_type, kind], ceiling)
            in_use.add_metric([task_type, kind], used)
            saturation.add_metric([task_type, kind], used / ceiling)
    yield from (waiting, limit, in_use, saturation, full_keys)


class LimitCollector:
    """The flow-control families for one ``/metrics`` rendering."""

    def __init__(self, session: Session | None = None) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        return limit_families(self.session)
