"""Processors with limits (loaded with ASYNC_TASK_PROCESSORS=tests.processors,tests.limit_processors)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from webapp.tasks import RateLimit, TaskInfo, TaskLimits, TaskProcessor, TaskResult, Unique


@dataclass
class CustomerPayload:
    customer_id: int
    seconds: float = 0.0


class PerCustomerProcessor(TaskProcessor):
    """At most two of one customer at once."""

    task_type = "PER_CUSTOMER"
    payload_type = CustomerPayload

    def process(self, task: TaskInfo, payload: CustomerPayload) -> TaskResult:
        time.sleep(payload.seconds)
        return TaskResult.success({"customer": payload.customer_id})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(concurrency=2, concurrency_key="customer_id")


class OneAtATimeProcessor(TaskProcessor):
    """One at a time for the whole type."""

    task_type = "ONE_AT_A_TIME"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        time.sleep(float(payload.get("seconds", 0)))
        return TaskResult.success({})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(concurrency=1)


class RatedProcessor(TaskProcessor):
    """Three starts a second for the whole type."""

    task_type = "RATED"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success({})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(rate=RateLimit(3, 1.0))


class RatedPerTenantProcessor(TaskProcessor):
    """Two starts per 30 s per tenant (a window no test outlives)."""

    task_type = "RATED_PER_TENANT"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success({})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(rate=RateLimit(2, 30), rate_key="tenant")


@dataclass
class ReportPayload:
    report: str
    requested_by: str = ""


class DebouncedReportProcessor(TaskProcessor):
    """One waiting report per name: a second request while one waits is that task (debounce)."""

    task_type = "DEBOUNCED_REPORT"
    payload_type = ReportPayload

    def process(self, task: TaskInfo, payload: ReportPayload) -> TaskResult:
        return TaskResult.success({"report": payload.report})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(unique=Unique(fields=("report",), window_seconds=60, statuses=("PENDING",)))


class RatedTenProcessor(TaskProcessor):
    """Ten starts a second for the whole type (the multi-process rate test)."""

    task_type = "RATED_TEN"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success({})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(rate=RateLimit(10, 1.0))
