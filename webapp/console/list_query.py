"""One way to read a list page's URL (tasks, notifications, audit) and write it back canonically.

``ListQuery`` is what every filtered, keyset-paged console list has in common: a cursor, a
limit, the form as typed, and errors by field. ``ArgsReader`` parses the request's parameters
into it, one field at a time: a bad value is named in ``errors`` and keeps the text that was
typed, so nothing the operator entered is lost. Each page adds its own filter fields and says
how to write them back (``filter_params``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlencode

from flask import url_for
from flask_babel import gettext
from werkzeug.datastructures import MultiDict

from ..tasks.errors import ValidationError
from ..tasks.validation import validate_task_id

T = TypeVar("T")


@dataclass
class ListQuery:
    """A parsed list request: page position, the form as typed, errors by field."""

    ENDPOINT: ClassVar[str] = ""  # the page's view, for ``url``
    DEFAULT_LIMIT: ClassVar[int] = 50
    MAX_LIMIT: ClassVar[int] = 200

    cursor: int | None = None
    limit: int = 50
    form: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def filter_params(self) -> list[tuple[str, str]]:
        """The filter as (name, value) pairs in canonical order (no cursor)."""
        raise NotImplementedError

    def page_params(self) -> list[tuple[str, str]]:
        """The page size, when it is not the default."""
        return [("limit", str(self.limit))] if self.limit != self.DEFAULT_LIMIT else []

    def query_string(self, cursor: int | None = None) -> str:
        """Canonical query string of the filter, continuing at ``cursor`` when given."""
        params = self.filter_params() + self.page_params()
        if cursor is not None:
            params.append(("cursor", str(cursor)))
        return urlencode(params)

    def url(self, cursor: int | None = None) -> str:
        """The page's canonical URL for this filter (and ``cursor``)."""
        query = self.query_string(cursor)
        return url_for(self.ENDPOINT) + (f"?{query}" if query else "")


Q = TypeVar("Q", bound=ListQuery)


class ArgsReader:
    """Reads one request's parameters into a ``ListQuery``'s form, values and errors."""

    def __init__(self, args: MultiDict[str, str], query: ListQuery) -> None:
        self.args = args
        self.query = query

    def text(self, name: str, max_length: int | None = None) -> str | None:
        """A trimmed text parameter (``None`` when empty); too long is an error on ``name``."""
        value = (self.args.get(name) or "").strip()
        self.query.form[name] = value
        if not value:
            return None
        if max_length is not None and len(value) > max_length:
            self.query.errors[name] = f"{name} must be at most {max_length} characters"
            return None
        return value

    def parsed(self, name: str, parse: Callable[[str], T]) -> T | None:
        """A parameter read by ``parse``, whose ValidationError becomes an error on ``name``."""
        value = self.text(name)
        if value is None:
            return None
        try:
            return parse(value)
        except ValidationError as exc:
            self.query.errors[name] = exc.message
            return None

    def whole_number(self, name: str, low: int, high: int, label: str | None = None) -> int | None:
        """A whole number from ``low`` to ``high``; errors say ``label`` (the form's words) if given."""
        return self.parsed(name, lambda text: whole_number(text, name, low, high, label))

    def task_id(self, name: str) -> int | None:
        """A task (or row) id; a leading ``#`` is allowed, as people write it."""
        return self.parsed(name, lambda text: validate_task_id(text.lstrip("#"), name))

    def choices(self, name: str, validate: Callable[[str], str]) -> tuple[str, ...]:
        """A repeatable parameter (``status=A&status=B`` or ``status=A,B``), each checked, no repeats."""
        chosen: list[str] = []
        for raw in self.args.getlist(name):
            for part in raw.split(","):
                if not part.strip():
                    continue
                try:
                    value = validate(part.strip())
                except ValidationError as exc:
                    self.query.errors[name] = exc.message
                    continue
                if value not in chosen:
                    chosen.append(value)
        self.query.form[name] = chosen
        return tuple(chosen)

    def page(self) -> None:
        """The page size and the cursor, into the query."""
        limit = self.whole_number("limit", 1, self.query.MAX_LIMIT)
        if limit is not None:
            self.query.limit = limit
        self.query.cursor = self.parsed("cursor", lambda text: validate_task_id(text, "cursor"))


def whole_number(text: str, name: str, low: int, high: int, label: str | None = None) -> int:
    """``text`` as a whole number from ``low`` to ``high``, or a ValidationError for the field
    ``name`` whose message says ``label`` (the form's own words, translated) when given."""
    try:
        number = int(text.strip())
    except ValueError:
        message = (gettext("%(label)s must be a whole number", label=label) if label
                   else f"{name} must be a whole number")
        raise ValidationError(message, field=name) from None
    if not low <= number <= high:
        message = (gettext("%(label)s must be between %(low)s and %(high)s", label=label, low=low, high=high)
                   if label else f"{name} must be between {low} and {high}")
        raise ValidationError(message, field=name)
    return number


@dataclass
class AuditQuery(ListQuery):
    """The audit page's filter: one actor, an action prefix."""

    ENDPOINT: ClassVar[str] = "console.audit"
    DEFAULT_LIMIT: ClassVar[int] = 100
    MAX_LIMIT: ClassVar[int] = 500

    limit: int = 100
    actor: str | None = None
    action: str | None = None

    def filter_params(self) -> list[tuple[str, str]]:
        """The filter as (name, value) pairs in canonical order."""
        return [(name, value) for name, value in (("actor", self.actor), ("action", self.action)) if value]


def parse_audit_query(args: MultiDict[str, str]) -> AuditQuery:
    """Read the audit page's parameters; every bad one is named in ``errors``."""
    query = AuditQuery()
    reader = ArgsReader(args, query)
    query.actor = reader.text("actor", 255)
    query.action = reader.text("action", 64)
    reader.page()
    return query
