"""Processors the benchmarks run (loaded through ASYNC_TASK_PROCESSORS=bench.processors).

``BENCH_NOOP`` does nothing, so a drain measures the engine alone. ``BENCH_STAMP`` returns the
wall-clock time at which ``process()`` started, so the bench process can compute pickup latency
from its own submit time (same machine, same clock). ``TYPE_0`` .. ``TYPE_19`` are the twenty
task types of the console-at-scale data set.
"""

from __future__ import annotations

import time

from webapp.tasks import TaskInfo, TaskProcessor, TaskResult

CONSOLE_TYPE_COUNT = 20


class BenchNoopProcessor(TaskProcessor):
    """Does nothing and succeeds."""

    task_type = "BENCH_NOOP"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        """Succeed at once with no result data."""
        return TaskResult.success()


class BenchStampProcessor(TaskProcessor):
    """Succeeds with the time (``time.time()``) at which processing started."""

    task_type = "BENCH_STAMP"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        """Record the start time as the result."""
        return TaskResult.success({"started": time.time()})


def _console_type(index: int) -> type[TaskProcessor]:
    """A no-op processor class for console data-set type ``TYPE_<index>``."""

    class ConsoleTypeProcessor(BenchNoopProcessor):
        task_type = f"TYPE_{index}"

    ConsoleTypeProcessor.__name__ = f"ConsoleType{index}Processor"
    ConsoleTypeProcessor.__qualname__ = ConsoleTypeProcessor.__name__
    return ConsoleTypeProcessor


for _index in range(CONSOLE_TYPE_COUNT):
    globals()[f"ConsoleType{_index}Processor"] = _console_type(_index)
