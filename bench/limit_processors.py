"""Processors of the flow-control benchmark (loaded with bench.processors for its own runs only).

``BENCH_LIMITED`` is a no-op held back by both limits the claim enforces: at most one running
per customer and one start a minute for the whole type, so a drain of ``BENCH_NOOP`` runs
beside thousands of limited tasks that stay waiting and are skipped by every claim.
"""

from __future__ import annotations

from webapp.tasks import RateLimit, TaskInfo, TaskLimits, TaskProcessor, TaskResult


class BenchLimitedProcessor(TaskProcessor):
    """Succeeds at once; its limits keep nearly all of its tasks waiting."""

    task_type = "BENCH_LIMITED"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        """Succeed with no result data."""
        return TaskResult.success()

    def get_limits(self) -> TaskLimits:
        return TaskLimits(concurrency=1, concurrency_key="customer", rate=RateLimit(1, 60.0))
