"""Plain-JSON views of engine objects, shared by the API, the CLI and the console."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .masking import mask_json_text, mask_payload, scrub_task_text, sensitive_fields_for
from .models import AsyncTask, Notification, TaskEvent, Worker


def iso(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a 'Z', or None."""
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


# A task's fields in API order, each with how to read it (times in ISO-8601 UTC).
TASK_FIELDS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("id", lambda t: t.id),
    ("task_type", lambda t: t.task_type),
    ("status", lambda t: t.status),
    ("priority", lambda t: t.priority),
    # Sensitive payload fields leave the database masked (tasks/masking.py), also from errors.
    ("payload", lambda t: mask_payload(t.payload, sensitive_fields_for(t.task_type))),
    ("result", lambda t: t.result),
    ("retry_count", lambda t: t.retry_count),
    ("max_retry_count", lambda t: t.max_retry_count),
    ("retry_strategy", lambda t: t.retry_strategy),
    ("retry_interval", lambda t: t.retry_interval),
    ("created_by", lambda t: t.created_by),
    ("created_at", lambda t: iso(t.created_at)),
    ("updated_at", lambda t: iso(t.updated_at)),
    ("started_at", lambda t: iso(t.started_at)),
    ("finished_at", lambda t: iso(t.finished_at)),
    ("next_run_at", lambda t: iso(t.next_run_at)),
    ("error", lambda t: scrub_task_text(t.task_type, t.payload, t.error)),
    ("attempts", lambda t: t.attempts),
    ("recovery_count", lambda t: t.recovery_count),
    ("worker_id", lambda t: t.worker_id),
    ("idempotency_key", lambda t: t.idempotency_key),
    ("notify_url", lambda t: t.notify_url),
    ("parent_id", lambda t: t.parent_id),
    ("principal", lambda t: t.principal),
    ("progress", lambda t: t.progress),
    ("progress_message", lambda t: t.progress_message),
    ("cancel_requested_at", lambda t: iso(t.cancel_requested_at)),
    ("start_by", lambda t: iso(t.start_by)),
)
# Fields a list row replaces by bounded previews (see ``task_preview_to_dict``).
PREVIEWED = frozenset({"payload", "result", "error"})


def task_to_dict(task: AsyncTask | Any) -> dict[str, Any]:
    """Every column of SPEC section 3 (plus lease and progress fields), times in ISO-8601 UTC."""
    return {key: read(task) for key, read in TASK_FIELDS}


def _preview(head: str | None, limit: int) -> tuple[str | None, bool]:
    """The shown part of a head read with one character more than ``limit``, and whether it was cut."""
    if head is None:
        return None, False
    return head[:limit], len(head) > limit


def task_preview_to_dict(task: AsyncTask | Any, preview_chars: int, error_chars: int) -> dict[str, Any]:
    """A list row (a task from ``list_task_previews``): ``task_to_dict``'s keys, payload, result
    and error bounded.

    ``payload_preview``/``result_preview`` are the start of the JSON text (at most
    ``preview_chars`` characters) and ``*_truncated`` says whether more exists; ``payload`` and
    ``result`` are the values themselves when they fit, else null (the whole value is at
    ``GET /api/tasks/<id>``). ``error`` is cut at ``error_chars`` (``error_truncated``).
    """
    item = {key: read(task) for key, read in TASK_FIELDS if key not in PREVIEWED}
    sensitive = sensitive_fields_for(task.task_type)
    for name in ("payload", "result"):
        preview, cut = _preview(getattr(task, f"{name}_head"), preview_chars)
        item[name] = json.loads(preview) if preview is not None and not cut else None
        item[f"{name}_preview"] = preview
        item[f"{name}_truncated"] = cut
    # The cut is made before masking, so ``*_truncated`` still describes the stored text.
    item["payload_preview"] = mask_json_text(item["payload_preview"], sensitive)
    error, item["error_truncated"] = _preview(task.error_head, error_chars)
    item["error"] = scrub_task_text(task.task_type, item["payload"], error)
    item["payload"] = mask_payload(item["payload"], sensitive)
    return item


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
