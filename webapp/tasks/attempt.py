"""One claimed attempt of a task, as its worker sees it (the processor API's ``TaskInfo``).

Its own module so that the pieces holding a lease (``fencing``, ``progress``) and the processor
API can all name it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class TaskInfo:
    """The task as handed to ``process()``: a read-only snapshot of the claimed row."""

    id: int
    task_type: str
    payload: dict[str, Any]
    priority: int
    retry_count: int
    max_retry_count: int
    created_by: str | None
    created_at: datetime | None
    attempt: int
    claim_token: str
    retry_strategy: str = "EXPONENTIAL"
    retry_interval: float = 60
    retry_max_delay: float | None = None
    retry_jitter: float = 0.0
    notify_url: str | None = None
    # Workflows (docs/workflows.md): the workflow and key of this task, its parents' results by
    # key (a callback gets every task's result), and for a callback the workflow's summary.
    workflow_id: int | None = None
    workflow_key: str | None = None
    parent_results: Mapping[str, Any] = field(default_factory=dict)
    workflow_summary: Mapping[str, Any] | None = None

