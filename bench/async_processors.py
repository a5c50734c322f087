"""The async no-op of the drain benchmark (loaded only for its run, next to bench.processors).

Kept apart from ``bench/processors.py`` so the other runs' workers have no async type, hence no
event loop and no async claim lane: their figures measure exactly what a user without async
processors gets.
"""

from __future__ import annotations

from webapp.tasks import TaskInfo, TaskProcessor, TaskResult


class BenchAsyncNoopProcessor(TaskProcessor):
    """``async def`` and does nothing: a drain of it measures the engine's async path alone."""

    task_type = "BENCH_ASYNC_NOOP"

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        """Succeed at once with no result data."""
        return TaskResult.success()
