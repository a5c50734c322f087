"""Processors the workflow tests use (loaded with ``tests.processors`` through ASYNC_TASK_PROCESSORS)."""

from __future__ import annotations

import threading

from webapp.tasks import TaskInfo, TaskProcessor, TaskResult

# What each run saw, in the order the runs started: (key, parent_results, workflow_summary).
SEEN: list[tuple[str | None, dict, dict | None]] = []
SEEN_LOCK = threading.Lock()


def seen_keys() -> list[str | None]:
    with SEEN_LOCK:
        return [key for key, _, _ in SEEN]


class AddProcessor(TaskProcessor):
    """Adds its payload's ``n`` to the sum of its parents' results; records what it saw."""

    task_type = "WF_ADD"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        with SEEN_LOCK:
            SEEN.append((task.workflow_key, dict(task.parent_results), None))
        total = int(payload.get("n", 0)) + sum(int(r["sum"]) for r in task.parent_results.values() if r)
        return TaskResult.success({"sum": total})


class FailProcessor(TaskProcessor):
    """Fails for good (not retryable) unless its payload says ``"ok": true``."""

    task_type = "WF_FAIL"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        with SEEN_LOCK:
            SEEN.append((task.workflow_key, dict(task.parent_results), None))
        if payload.get("ok") or FLAGS.get("fixed"):
            return TaskResult.success({"sum": 0})
        return TaskResult.failure("this step fails", retryable=False)


class CallbackProcessor(TaskProcessor):
    """A callback: records the workflow summary it received."""

    task_type = "WF_CALLBACK"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        with SEEN_LOCK:
            SEEN.append((task.workflow_key, dict(task.parent_results), dict(task.workflow_summary or {})))
        return TaskResult.success({"seen_total": (task.workflow_summary or {}).get("total")})


FLAGS: dict[str, bool] = {}  # "fixed": WF_FAIL succeeds (an operator fixed the cause)
