"""A schedule's definition checked field by field: every refusal names the field it is about.

Used by create and update (console, API, CLI) and by the declarations in code and
configuration, so a bad cron is refused with the same words wherever it was typed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime
from typing import Any

from ..tasks.errors import InvalidPayload, UnknownTaskType, ValidationError
from ..tasks.registry import ProcessorRegistry, payload_from_json
from .models import CatchUpPolicy, OverlapPolicy
from .triggers import Recurrence, parse_cron, validate_interval, validate_timezone

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}\Z")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_DESCRIPTION = 2000
EARLIEST, LATEST = 1970, 2999
FIELDS = ("name", "task_type", "payload", "priority", "created_by", "cron", "interval_seconds", "timezone",
          "start_at", "end_at", "enabled", "overlap", "catch_up", "description")


@dataclass
class ScheduleDefinition:
    """Every user-settable column of a schedule, validated."""

    name: str
    task_type: str
    payload: dict[str, Any]
    priority: int | None
    created_by: str | None
    cron: str | None
    interval_seconds: int | None
    timezone: str
    start_at: datetime | None
    end_at: datetime | None
    enabled: bool
    overlap: str
    catch_up: str
    description: str

    def columns(self) -> dict[str, Any]:
        """The definition as column values of ``Schedule``."""
        return asdict(self)

    def recurrence(self, anchor_at: datetime) -> Recurrence:
        """Its fire times, counted (for intervals) from ``anchor_at`` unless it has a start."""
        return Recurrence(cron=self.cron, interval_seconds=self.interval_seconds, timezone=self.timezone,
                          anchor_at=self.start_at or anchor_at, start_at=self.start_at, end_at=self.end_at)


def parse_moment(value: Any, field: str) -> datetime | None:
    """An aware time (or ISO-8601 text with a zone, 'Z' allowed); empty means none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(f"{field} must be an ISO-8601 time such as 2026-01-01T12:00:00Z, got {value!r}",
                                  field=field) from None
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a time (ISO-8601 with a zone)", field=field)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{field} must include a time zone (e.g. 2026-01-01T12:00:00Z)", field=field)
    if not EARLIEST <= value.year <= LATEST:
        # Fire-time arithmetic near datetime's limits overflows; no schedule needs those years.
        raise ValidationError(f"{field} must be between the years {EARLIEST} and {LATEST}", field=field)
    return value.astimezone(UTC)


def _text(value: Any, field: str, limit: int, *, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip() and not required):
        if required:
            raise ValidationError(f"{field} is required", field=field)
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field=field)
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain NUL characters", field=field)
    if not _encodable(value):
        raise ValidationError(f"{field} contains invalid Unicode (a lone surrogate)", field=field)
    if len(value) > limit:
        raise ValidationError(f"{field} must be at most {limit} characters", field=field)
    return value.strip() if required else value


def _encodable(text: str) -> bool:
    """Whether both databases can store the text (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _choice(value: Any, field: str, allowed: type[OverlapPolicy] | type[CatchUpPolicy]) -> str:
    options = [member.value for member in allowed]
    if value not in options:
        raise ValidationError(f"{field} must be one of {', '.join(options)}, got {value!r}", field=field)
    return str(value)


def _boolean(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise ValidationError(f"{field} must be true or false", field=field)


def validate_payload(registry: ProcessorRegistry, task_type: str, payload: Any) -> dict[str, Any]:
    """A JSON object the task type's processor accepts (checked like any submit)."""
    processor = registry.get(task_type)
    if processor is None:
        raise UnknownTaskType(f"unknown task type {task_type!r}", field="task_type")
    if is_dataclass(payload) and not isinstance(payload, type):
        payload = asdict(payload)
    if not isinstance(payload, dict):
        raise InvalidPayload(f"payload must be a JSON object, got {type(payload).__name__}", field="payload")
    try:
        data = json.loads(json.dumps(payload, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload is not JSON-serialisable: {exc}", field="payload") from None
    encoded = json.dumps(data, ensure_ascii=False)
    if "\\u0000" in encoded:
        raise InvalidPayload("payload must not contain NUL (\\u0000) characters", field="payload")
    if not _encodable(encoded):
        raise InvalidPayload("payload contains invalid Unicode (a lone surrogate)", field="payload")
    if processor.payload_type is not None:
        payload_from_json(processor.payload_type, data)
    return dict(data)


def validate_definition(raw: Mapping[str, Any], registry: ProcessorRegistry) -> ScheduleDefinition:
    """Check a complete definition (missing optional fields take their defaults)."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; allowed: {', '.join(FIELDS)}", field=unknown[0])
    name = _text(raw.get("name"), "name", 100, required=True)
    assert name is not None
    if not NAME_PATTERN.match(name):
        raise ValidationError("name must be 1 to 100 letters, digits, '.', '_', ':' or '-', starting with a "
                              "letter or digit", field="name")
    task_type = _text(raw.get("task_type"), "task_type", 100, required=True)
    assert task_type is not None
    if task_type not in registry:
        raise UnknownTaskType(f"unknown task type {task_type!r}; registered: "
                              f"{', '.join(registry.task_types()) or 'none'}", field="task_type")
    cron_text, interval = raw.get("cron"), raw.get("interval_seconds")
    cron_text = None if cron_text is None or (isinstance(cron_text, str) and not cron_text.strip()) else cron_text
    interval = None if interval is None or (isinstance(interval, str) and not interval.strip()) else interval
    if cron_text is not None and interval is not None:
        raise ValidationError("give either cron or interval_seconds, not both", field="interval_seconds")
    if cron_text is None and interval is None:
        raise ValidationError("give a cron expression or an interval in seconds", field="cron")
    cron = None
    if cron_text is not None:
        parse_cron(cron_text)
        cron = " ".join(str(cron_text).split())
        if cron.startswith("@"):  # kept as typed: "@daily" reads better than "0 0 * * *"
            cron = cron.lower()
    interval_seconds = validate_interval(interval) if interval is not None else None
    timezone = raw.get("timezone") or "UTC"
    validate_timezone(timezone)
    start_at = parse_moment(raw.get("start_at"), "start_at")
    end_at = parse_moment(raw.get("end_at"), "end_at")
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise ValidationError("end_at must be after start_at", field="end_at")
    priority = raw.get("priority")
    if isinstance(priority, str) and priority.strip():
        try:
            priority = int(priority.strip())
        except ValueError:
            raise ValidationError("priority must be a whole number", field="priority") from None
    elif isinstance(priority, str):
        priority = None
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise ValidationError("priority must be a whole number", field="priority")
    if priority is not None and not INT32_MIN <= priority <= INT32_MAX:
        raise ValidationError(f"priority must be between {INT32_MIN} and {INT32_MAX}", field="priority")
    payload = validate_payload(registry, task_type, {} if raw.get("payload") is None else raw.get("payload"))
    return ScheduleDefinition(
        name=name,
        task_type=task_type,
        payload=payload,
        priority=priority,
        created_by=_text(raw.get("created_by"), "created_by", 255),
        cron=cron,
        interval_seconds=interval_seconds,
        timezone=str(timezone).strip(),
        start_at=start_at,
        end_at=end_at,
        enabled=_boolean(raw.get("enabled", True), "enabled"),
        overlap=_choice(raw.get("overlap") or OverlapPolicy.ALLOW.value, "overlap", OverlapPolicy),
        catch_up=_choice(raw.get("catch_up") or CatchUpPolicy.NONE.value, "catch_up", CatchUpPolicy),
        description=_text(raw.get("description"), "description", MAX_DESCRIPTION) or "",
    )
