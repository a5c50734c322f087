"""The task list's URL parameters: parsed into a ``TaskFilter``, and written back canonically.

Names follow the JSON API (``task_type``, ``status`` repeatable and in capitals,
``created_by``, ``created_after``, ``created_before``, ``search``, ``limit``, ``cursor``) plus the
console's ``priority_min``, ``priority_max`` and ``id``. Parsing is ``list_query.ArgsReader``'s,
shared with the notifications and audit pages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

from flask_babel import gettext
from werkzeug.datastructures import MultiDict

from ..tasks.queries import TaskFilter
from ..tasks.serialize import iso
from ..tasks.validation import INT32_MAX, INT32_MIN, validate_status
from .clock import input_value, parse_clock_input
from .list_query import ArgsReader, ListQuery

MAX_SEARCH = 200


@dataclass
class TaskQuery(ListQuery):
    """A parsed task-list request: the filter, the page, and what the form should show."""

    ENDPOINT: ClassVar[str] = "console.tasks"

    filters: TaskFilter = field(default_factory=TaskFilter)

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
        return params


def parse_task_query(args: MultiDict[str, str]) -> TaskQuery:
    """Read the task list's parameters; every bad one is named in ``errors``."""
    query = TaskQuery()
    read = ArgsReader(args, query)
    values: dict[str, Any] = {"statuses": read.choices("status", lambda text: validate_status(text.upper()))}
    values["task_type"] = read.text("task_type")
    values["created_by"] = read.text("created_by")
    for name, label in (("priority_min", gettext("Priority from")), ("priority_max", gettext("Priority to"))):
        values[name] = read.whole_number(name, INT32_MIN, INT32_MAX, label)
    for name in ("created_after", "created_before"):
        values[name] = read.parsed(name, partial(parse_clock_input, field=name))
        if values[name] is not None:
            query.form[name] = input_value(values[name])  # in the zone the page shows
    values["task_id"] = read.task_id("id")
    values["search"] = read.text("search", MAX_SEARCH)
    if values["priority_min"] is not None and values["priority_max"] is not None \
            and values["priority_min"] > values["priority_max"]:
        query.errors["priority_max"] = "priority_max must not be below priority_min"
    read.page()
    query.filters = TaskFilter(**{name: value for name, value in values.items() if value is not None})
    return query
