"""Plain-JSON views of engine objects, shared by the API, the CLI and the console."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .models import AsyncTask, Notification, TaskEvent, Worker


def iso(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a 'Z', or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


def task_to_dict(task: AsyncTask | Any) -> dict[str, Any]:
    """Every column of SPEC section 3 (plus lease and progress fields), times in ISO-8601 UTC."""
    return {
        "id": task.id,
        "task_type": task.task_type,
        "status": task.status,
        "priority": task.priority,
        "payload": task.payload,
        "result": task.result,
        "retry_count": task.retry_count,
        "max_retry_count": task.max_retry_count,
        "retry_strategy": task.retry_strategy,
        "retry_interval": task.retry_interval,
        "created_by": task.created_by,
        "created_at": iso(task.created_at),
        "updated_at": iso(task.updated_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        "next_run_at": iso(task.next_run_at),
        "error": task.error,
        "attempts": task.attempts,
        "recovery_count": task.recovery_count,
        "worker_id": task.worker_id,
        "idempotency_key": task.idempotency_key,
        "notify_url": task.notify_url,
        "parent_id": task.parent_id,
        "principal": task.principal,
        "progress": task.progress,
        "progress_message": task.progress_message,
        "cancel_requested_at": iso(task.cancel_requested_at),
    }


def event_to_dict(event: TaskEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "kind": event.kind,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "attempt": event.attempt,
        "worker_id": event.worker_id,
        "actor": event.actor,
        "message": event.message,
        "traceback": event.traceback,
    }


def worker_to_dict(worker: Worker) -> dict[str, Any]:
    return {
        "id": worker.id,
        "hostname": worker.hostname,
        "pid": worker.pid,
        "concurrency": worker.concurrency,
        "busy": worker.busy,
        "status": worker.status,
        "started_at": iso(worker.started_at),
        "last_heartbeat_at": iso(worker.last_heartbeat_at),
        "processed": worker.processed,
        "failed": worker.failed,
    }


def notification_to_dict(note: Notification) -> dict[str, Any]:
    return {
        "id": note.id,
        "task_id": note.task_id,
        "type": note.type,
        "recipient": note.recipient,
        "subject": note.subject,
        "status": note.status,
        "attempts": note.attempts,
        "max_attempts": note.max_attempts,
        "next_attempt_at": iso(note.next_attempt_at),
        "last_error": note.last_error,
        "created_at": iso(note.created_at),
        "sent_at": iso(note.sent_at),
    }
