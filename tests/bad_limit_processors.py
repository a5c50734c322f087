"""A processor whose limits name a payload field that does not exist (start-up must refuse it)."""

from __future__ import annotations

from dataclasses import dataclass

from webapp.tasks import TaskInfo, TaskLimits, TaskProcessor, TaskResult, Unique


@dataclass
class ReportPayload:
    report: str


class BadUniqueProcessor(TaskProcessor):
    task_type = "BAD_UNIQUE"
    payload_type = ReportPayload

    def process(self, task: TaskInfo, payload: ReportPayload) -> TaskResult:
        return TaskResult.success()

    def get_limits(self) -> TaskLimits:
        return TaskLimits(unique=Unique(fields=("customer",)))
