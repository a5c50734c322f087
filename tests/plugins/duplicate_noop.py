"""A second processor for NOOP: registering it next to tests.processors must fail."""

from webapp.tasks import TaskProcessor, TaskResult


class AnotherNoop(TaskProcessor):
    task_type = "NOOP"

    def process(self, task, payload):
        return TaskResult.success()
