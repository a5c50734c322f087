"""The task list's URL parameters: parsed into a ``TaskFilter``, and written back canonically.

Names follow the JSON API (``task_type``, ``status`` repeatable and in capitals,
``created_by``, ``created_after``, ``created_before``, ``search``, ``limit``, ``cursor``) plus the
console's ``priority_min``, ``priority_max`` and ``id``. A bad value is reported by field and keeps the
text the operator typed, so nothing they entered is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from werkzeug.datastructures import MultiDict

from ..tasks.errors import ValidationError
from ..tasks.serialize import iso
from ..tasks.service import (
    INT32_MAX,
    INT32_MIN,
    TaskFilter,
    parse_time,
    validate_status,
    validate_task_id,
)

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_SEARCH = 200


class KeysetQueryString:
    """The canonical query string of a filtered, keyset-paged page (tasks, notifications)."""

    def filter_params(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def query_string(self, cursor: int | None = None) -> str:
        """Canonical query string of the filter, continuing at ``cursor`` when given."""
        params = self.filter_params()
        if cursor is not None:
            params.append(("cursor", str(cursor)))
        return urlencode(params)


@dataclass
class TaskQuery(KeysetQueryString):
    """A parsed task-list request: the filter, the page, and what the form should show."""

    filters: TaskFilter = field(default_factory=TaskFilter)
    cursor: int | None = None
    limit: int = DEFAULT_LIMIT
    form: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def is_filtered(self) -> bool:
        """Whether any filter is set."""
        return self.filters != TaskFilter()

    def filter_params(self) -> list[tuple[str, str]]:
        """The filter as (name, value) pairs in canonical order (no page parameters)."""
        f = self.filters
        params: list[tuple[str, str]] = []
        if f.task_type:
            params.append(("task_type", f.task_type))
        params.extend(("status", status) for status in f.statuses)
        if f.priority_min is not None:
            params.append(("priority_min", str(f.priority_min)))
        if f.priority_max is not None:
            params.append(("priority_max", str(f.priority_max)))
        if f.created_by:
            params.append(("created_by", f.created_by))
        if f.created_after is not None:
            params.append(("created_after", iso(f.created_after) or ""))
        if f.created_before is not None:
            params.append(("created_before", iso(f.created_before) or ""))
        if f.task_id is not None:
            params.append(("id", str(f.task_id)))
        if f.search:
            params.append(("search", f.search))
        if self.limit != DEFAULT_LIMIT:
            params.append(("limit", str(self.limit)))
        return params



def _form_time(value: datetime | None) -> str:
    """The value a ``datetime-local`` input shows (UTC, no zone suffix)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") if value is not None else ""


def parse_time_input(text: str, name: str) -> datetime:
    """ISO-8601 with a zone, or a zone-less ``datetime-local`` value taken as UTC."""
    try:
        return parse_time(text, name)
    except ValidationError:
        try:
            naive = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValidationError(f"{name} must be a time like 2026-01-01T12:00:00Z", field=name) from None
        if naive.tzinfo is not None:
            raise
        return naive.replace(tzinfo=UTC)


def _parse_int(text: str, name: str, low: int, high: int) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        raise ValidationError(f"{name} must be a whole number", field=name) from None
    if not low <= number <= high:
        raise ValidationError(f"{name} must be between {low} and {high}", field=name)
    return number


def parse_task_query(args: MultiDict[str, str]) -> TaskQuery:
    """Read the task list's parameters; every bad one is named in ``errors``."""
    query = TaskQuery()
    errors = query.errors
    form: dict[str, Any] = {name: (args.get(name) or "").strip() for name in (
        "task_type", "priority_min", "priority_max", "created_by", "created_after", "created_before", "id",
        "search")}
    values: dict[str, Any] = {}

    statuses: list[str] = []
    for raw in args.getlist("status"):
        for part in raw.split(","):
            part = part.strip().upper()
            if not part:
                continue
            try:
                status = validate_status(part)
            except ValidationError as exc:
                errors["status"] = exc.message
                continue
            if status not in statuses:
                statuses.append(status)
    form["status"] = statuses
    values["statuses"] = tuple(statuses)

    if form["task_type"]:
        values["task_type"] = form["task_type"]
    if form["created_by"]:
        values["created_by"] = form["created_by"]
    for name in ("priority_min", "priority_max"):
        if form[name]:
            try:
                values[name] = _parse_int(form[name], name, INT32_MIN, INT32_MAX)
            except ValidationError as exc:
                errors[name] = exc.message
    for name in ("created_after", "created_before"):
        if form[name]:
            try:
                values[name] = parse_time_input(form[name], name)
                form[name] = _form_time(values[name])
            except ValidationError as exc:
                errors[name] = exc.message
    if form["id"]:
        try:
            values["task_id"] = validate_task_id(form["id"].lstrip("#"), "id")
        except ValidationError as exc:
            errors["id"] = exc.message
    if form["search"]:
        if len(form["search"]) > MAX_SEARCH:
            errors["search"] = f"search must be at most {MAX_SEARCH} characters"
        else:
            values["search"] = form["search"]
    if values.get("priority_min") is not None and values.get("priority_max") is not None \
            and values["priority_min"] > values["priority_max"]:
        errors["priority_max"] = "priority_max must not be below priority_min"

    limit_text = (args.get("limit") or "").strip()
    if limit_text:
        try:
            query.limit = _parse_int(limit_text, "limit", 1, MAX_LIMIT)
        except ValidationError as exc:
            errors["limit"] = exc.message
    form["limit"] = limit_text
    cursor_text = (args.get("cursor") or "").strip()
    if cursor_text:
        try:
            query.cursor = validate_task_id(cursor_text, "cursor")
        except ValidationError as exc:
            errors["cursor"] = exc.message

    query.filters = TaskFilter(**values)
    query.form = form
    return query
