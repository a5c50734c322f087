"""Input checks shared by every front end: each refusal names its field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from webapp.tasks.errors import InvalidPayload, UnknownTaskType, ValidationError
from webapp.tasks.processor import TaskProcessor, TaskResult
from webapp.tasks.validation import (
    checked_batch_item,
    parse_time,
    task_row,
    unstorable_text,
    validate_limit,
    validate_status,
    validate_task_id,
)

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@dataclass
class Point:
    x: int


class PointProcessor(TaskProcessor):
    task_type = "POINT"
    payload_type = Point

    def process(self, task, payload):  # pragma: no cover - never run here
        return TaskResult.success()


def lookup(task_type: str) -> TaskProcessor:
    if task_type != "POINT":
        raise UnknownTaskType(f"unknown task type {task_type!r}", field="task_type")
    return PointProcessor()


def row(**overrides):
    args = {"task_type": "POINT", "payload": {"x": 1}, "priority": None, "created_by": None, "run_at": None,
            "idempotency_key": None, "idempotency_scope": None, "notify_url": None, "parent_id": None}
    args.update(overrides)
    return task_row(lookup, lambda: NOW, **args)


def test_a_row_has_every_column_and_the_clock_times():
    built = row(payload=Point(3), priority=5, run_at="2026-12-01T00:00:00Z")
    assert built["payload"] == {"x": 3} and built["priority"] == 5
    assert built["created_at"] == NOW and built["next_run_at"] == datetime(2026, 12, 1, tzinfo=UTC)
    assert built["status"] == "PENDING" and built["claim_token"] is None


@pytest.mark.parametrize(("overrides", "error", "field"), [
    ({"task_type": ""}, ValidationError, "task_type"),
    ({"task_type": "NOPE"}, UnknownTaskType, "task_type"),
    ({"payload": [1]}, InvalidPayload, "payload"),
    ({"payload": {"x": "\x00"}}, InvalidPayload, "payload"),
    ({"priority": 2**31}, ValidationError, "priority"),
    ({"priority": True}, ValidationError, "priority"),
    ({"created_by": "x" * 256}, ValidationError, "created_by"),
    ({"run_at": "2026-01-01T00:00:00"}, ValidationError, "run_at"),
    ({"idempotency_key": ""}, ValidationError, "idempotency_key"),
    ({"notify_url": "ftp://example.com/"}, ValidationError, "notify_url"),
])
def test_bad_input_names_the_field(overrides, error, field):
    with pytest.raises(error) as raised:
        row(**overrides)
    assert raised.value.field == field


def test_scalar_checks():
    assert validate_task_id(" 12 ") == 12
    assert validate_status("FAILURE") == "FAILURE"
    assert validate_limit(500) == 500
    assert parse_time("2026-01-01T00:00:00z", "t") == datetime(2026, 1, 1, tzinfo=UTC)
    assert unstorable_text({"a": ["\ud800"]}) == "contains invalid Unicode (a lone surrogate)"
    for call, field in ((lambda: validate_task_id(0), "id"), (lambda: validate_status("DONE"), "status"),
                        (lambda: validate_limit(501), "limit"), (lambda: parse_time(5, "t"), "t")):
        with pytest.raises(ValidationError) as raised:
            call()
        assert raised.value.field == field


def test_batch_items_are_objects_with_known_fields():
    assert checked_batch_item(0, {"task_type": "POINT"}) == {"task_type": "POINT"}
    with pytest.raises(ValidationError) as raised:
        checked_batch_item(3, {"task_type": "POINT", "colour": "red"})
    assert raised.value.field == "tasks[3].colour"
    with pytest.raises(ValidationError) as raised:
        checked_batch_item(4, "POINT")
    assert raised.value.field == "tasks[4]"
