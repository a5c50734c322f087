"""Checks every front end relies on: bad input raises a ``ValidationError`` naming the field.

Nothing here touches the database; a refused value has written nothing. ``task_row`` turns the
arguments of a submit into the complete row the engine inserts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..notifications.addresses import validate_webhook_url
from .errors import InvalidPayload, ValidationError, json_kind, json_shown
from .models import TaskStatus
from .processor import TaskProcessor
from .registry import payload_from_json

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# Fields ``submit_many`` accepts in each item (the ``submit_task`` arguments).
BATCH_ITEM_FIELDS = frozenset({"task_type", "payload", "priority", "created_by", "run_at", "notify_url",
                               "idempotency_key", "start_by", "expires_in"})
MAX_EXPIRES_IN = 10 * 365 * 86400  # seconds: ten years


def validate_task_id(value: Any, field: str = "id") -> int:
    """A task id: a positive integer (strings of digits accepted from URLs and the CLI)."""
    if isinstance(value, bool):
        raise ValidationError(f"{field} must be a positive integer", field=field)
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())
    if not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        raise ValidationError(f"{field} must be a positive integer, got {json_shown(value)}", field=field)
    return value


def validate_status(value: Any) -> str:
    """A ``TaskStatus`` value; anything else names the statuses there are."""
    try:
        return TaskStatus(value).value
    except ValueError:
        allowed = ", ".join(s.value for s in TaskStatus)
        raise ValidationError(f"unknown status {value!r}; expected one of {allowed}", field="status") from None


def validate_limit(limit: Any, most: int = 500) -> int:
    """A page size from 1 to ``most``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise ValidationError(f"limit must be an integer from 1 to {most}", field="limit")
    return limit


def parse_time(value: Any, field: str) -> datetime:
    """An aware datetime, or an ISO-8601 string with a time zone ('Z' allowed)."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(f"{field} must be an ISO-8601 time, got {json_shown(value)}", field=field) from None
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a time (an aware datetime or ISO-8601 string)", field=field)
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError(f"{field} must include a time zone (e.g. 2026-01-01T12:00:00Z)", field=field)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past datetime.max in UTC
        raise ValidationError(f"{field} is out of the supported range (years 1 to 9999 in UTC)",
                              field=field) from None


def unstorable_text(value: Any) -> str | None:
    """Why a JSON value holds text no database here can store (NUL, lone surrogates), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL (\\u0000) characters"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "contains invalid Unicode (a lone surrogate)"
    return None


def task_row(processor_for: Callable[[str], TaskProcessor], clock: Callable[[], datetime],
             task_type: Any, payload: Any, priority: Any, created_by: Any, run_at: Any,
             idempotency_key: Any, idempotency_scope: Any, notify_url: Any, parent_id: Any,
             principal: str | None = None, start_by: Any = None, expires_in: Any = None) -> dict[str, Any]:
    """The complete new row of a submit, every column set, or a ``ValidationError`` naming the field.

    ``principal`` is who submits (``token:<name>``, ``user:<name>``, ``cli``), set by the front
    end from its authentication, never from input; ``created_by`` is only the creator to notify.

    ``processor_for`` finds the task type's processor (``UnknownTaskType`` otherwise); ``clock``
    is the database's now, which becomes the creation time and, without ``run_at``, the due time.
    """
    if not isinstance(task_type, str) or not task_type.strip():
        raise ValidationError("task_type is required and must be a non-empty string", field="task_type")
    processor = processor_for(task_type)
    data, typed = validated_payload(processor, payload)
    priority = validated_priority(processor, typed, priority)
    if created_by is not None and (not isinstance(created_by, str) or len(created_by) > 255):
        raise ValidationError("created_by must be a string of at most 255 characters", field="created_by")
    for name, value in (("created_by", created_by), ("idempotency_key", idempotency_key),
                        ("notify_url", notify_url)):
        problem = unstorable_text(value) if isinstance(value, str) else None
        if problem:
            raise ValidationError(f"{name} {problem}", field=name)
    now = clock()
    next_run_at = now
    if run_at is not None:
        next_run_at = parse_time(run_at, "run_at")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or not idempotency_key or len(idempotency_key) > 200
    ):
        raise ValidationError("idempotency_key must be a string of 1 to 200 characters",
                              field="idempotency_key")
    if notify_url is not None:
        validate_webhook_url(notify_url, field="notify_url")
    deadline = start_deadline(start_by, expires_in, now, next_run_at)
    config = processor.get_retry_config()
    return {
        "task_type": task_type,
        "status": TaskStatus.PENDING.value,
        "priority": priority,
        "payload": data,
        "retry_count": 0,
        "max_retry_count": config.max_retry_count,
        "retry_strategy": config.strategy.value,
        "retry_interval": float(config.base_interval),
        "retry_max_delay": config.max_delay,
        "retry_jitter": config.jitter,
        "created_by": created_by,
        "created_at": now,
        "updated_at": now,
        "next_run_at": next_run_at,
        "idempotency_key": idempotency_key,
        "idempotency_scope": idempotency_scope if idempotency_key is not None else None,
        "notify_url": notify_url,
        "parent_id": parent_id,
        "principal": principal,
        "attempts": 0,
        "recovery_count": 0,
        # Columns a new task leaves empty, set explicitly so a returned object is complete.
        "result": None,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "claim_token": None,
        "worker_id": None,
        "progress": None,
        "progress_message": None,
        "cancel_requested_at": None,
        "workflow_id": None,
        "workflow_key": None,
        "pending_parents": 0,
        "start_by": deadline,
    }


def start_deadline(start_by: Any, expires_in: Any, now: datetime, next_run_at: datetime) -> datetime | None:
    """The time after which a task must not start (``start_by``, or now + ``expires_in`` seconds)."""
    if start_by is not None and expires_in is not None:
        raise ValidationError("give start_by or expires_in, not both", field="expires_in")
    if expires_in is not None:
        if (isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
                or not 0 < expires_in <= MAX_EXPIRES_IN):
            raise ValidationError(f"expires_in must be a number of seconds above 0 and at most {MAX_EXPIRES_IN}",
                                  field="expires_in")
        start_by = now + timedelta(seconds=expires_in)
    elif start_by is not None:
        start_by = parse_time(start_by, "start_by")
        if start_by <= now:
            raise ValidationError("start_by is already past", field="start_by")
    if start_by is not None and start_by <= next_run_at:
        raise ValidationError("start_by must be after run_at (the task could never start)", field="start_by")
    return start_by


def checked_batch_item(index: int, item: Any) -> dict[str, Any]:
    """One item of ``submit_many``: an object with known fields only (errors name ``tasks[index]``)."""
    if not isinstance(item, dict):
        raise ValidationError(f"item {index} must be an object", field=f"tasks[{index}]")
    unknown = sorted(set(item) - BATCH_ITEM_FIELDS)
    if unknown:
        raise ValidationError(f"item {index} has unknown field {unknown[0]!r}",
                              field=f"tasks[{index}].{unknown[0]}")
    return item


def validated_payload(processor: TaskProcessor, payload: Any) -> tuple[dict[str, Any], Any]:
    """The payload as stored JSON, and as the processor's ``payload_type`` (or the dict)."""
    payload_type = processor.payload_type
    if payload_type is not None and isinstance(payload, payload_type):
        data = asdict(payload) if is_dataclass(payload) else payload.model_dump()  # type: ignore[arg-type,attr-defined,union-attr]
    elif isinstance(payload, dict):
        data = payload
    elif is_dataclass(payload) and not isinstance(payload, type):
        raise InvalidPayload(
            f"payload is a {type(payload).__name__}, but task type {processor.get_task_type()!r} "
            f"expects {getattr(payload_type, '__name__', 'a JSON object')}", field="payload")
    else:
        raise InvalidPayload(f"payload must be a JSON object, got {json_kind(payload)}",
                             field="payload")
    try:
        encoded = json.dumps(data, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload is not JSON-serialisable: {exc}", field="payload") from None
    if any(not isinstance(key, str) for key in data):
        raise InvalidPayload("payload keys must be strings", field="payload")
    problem = unstorable_text(data)
    if problem:
        raise InvalidPayload(f"payload {problem}", field="payload")
    data = json.loads(encoded)  # a plain JSON copy: what is stored is what the worker gets
    typed = payload_from_json(payload_type, data) if payload_type is not None else data
    return data, typed


def validated_priority(processor: TaskProcessor, typed_payload: Any, priority: Any) -> int:
    """The explicit priority, else the processor's ``get_priority``, else 0; a 32-bit integer."""
    if priority is None:
        priority = processor.get_priority(typed_payload)
        if priority is None:
            return 0
        source = f"{type(processor).__name__}.get_priority()"
    else:
        source = "priority"
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValidationError(f"{source} must be an integer, got {json_shown(priority)}", field="priority")
    if not INT32_MIN <= priority <= INT32_MAX:
        raise ValidationError(f"{source} must be between {INT32_MIN} and {INT32_MAX}", field="priority")
    return priority
