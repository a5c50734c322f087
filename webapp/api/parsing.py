"""Reading API input: strict JSON bodies, bounded nesting, query parameters, opaque cursors.

Everything here only checks the shape of input; what a value means (a known task type, a
valid payload, an allowed transition) is decided by ``AsyncTaskService``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any

from flask import request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from ..tasks.errors import ValidationError, json_kind
from ..tasks.service import TaskFilter, parse_time, validate_status
from .errors import ApiError

MAX_JSON_DEPTH = 64
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
CURSOR_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
LIST_PARAMETERS = ("task_type", "status", "created_by", "created_after", "created_before", "limit",
                   "cursor")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def refuse_oversized_body() -> None:
    """Before every API call: a declared body over MAX_CONTENT_LENGTH is a 413.

    Werkzeug enforces the limit only when a view reads the body; cancel and retry read none,
    and must not act on a request that the limit refuses everywhere else.
    """
    limit = request.max_content_length
    if limit is not None and request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()


def refuse_unstorable_query_text() -> None:
    """Before every authenticated API call: a query parameter or path part with NUL is a 422 naming it.

    Every filter reaches PostgreSQL, which cannot compare text holding NUL; one check here covers
    the filters of every endpoint (exports, lists, nested blueprints) instead of each view's.
    """
    for name, value in request.args.items(multi=True):
        check_text(name, "query parameter name")
        check_text(value, name)
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str):
            check_text(value, name)


def read_json_object() -> dict[str, Any]:
    """The request body as a JSON object: malformed JSON 400, anything else but an object 422.

    ``request.get_data`` enforces MAX_CONTENT_LENGTH (413). NaN and Infinity are refused (they
    are not JSON), and so is nesting deeper than MAX_JSON_DEPTH, before it can exhaust the stack.
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise ApiError(400, "malformed_json", "request body is empty; send a JSON object")
    try:
        document = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep("") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, oversized integer literals
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ApiError(422, "invalid_argument",
                       f"request body must be a JSON object, got {json_kind(document)}")
    check_json_document(document)
    return document


def check_json_document(document: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse nesting deeper than ``max_depth`` and text the databases cannot store.

    PostgreSQL rejects NUL characters in text and JSONB, and neither database can store lone
    surrogates; refusing them here gives a 422 naming the field instead of a failed insert.
    Iterative, so a hostile document cannot exhaust the stack.
    """
    stack: list[tuple[Any, int, str]] = [(document, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise _too_deep(path)
            for key, child in value.items():
                child_path = f"{path}.{key}" if path else key
                check_text(key, child_path)
                stack.append((child, depth + 1, child_path))
        elif isinstance(value, list):
            if depth > max_depth:
                raise _too_deep(path)
            stack.extend((child, depth + 1, f"{path}[{index}]") for index, child in enumerate(value))
        elif isinstance(value, str):
            check_text(value, path)


def check_text(value: str, field: str) -> str:
    """A string both databases can store: no NUL character, no lone surrogate."""
    if "\x00" in value:
        raise ValidationError(f"{field or 'value'} must not contain NUL (\\u0000) characters",
                              field=field or None)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{field or 'value'} contains a lone surrogate (invalid Unicode)",
                              field=field or None) from None
    return value


def _too_deep(path: str) -> ApiError:
    where = f" at {path}" if path else ""
    return ApiError(422, "invalid_argument",
                    f"JSON is nested more than {MAX_JSON_DEPTH} levels deep{where}",
                    field=path or None)


def check_fields(body: dict[str, Any], allowed: Iterable[str], required: Iterable[str],
                 prefix: str = "") -> None:
    """Refuse unknown fields (typos must not be ignored silently) and missing required ones."""
    allowed = set(allowed)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(f"unknown field {prefix}{unknown[0]!r}; allowed: {', '.join(sorted(allowed))}",
                              field=f"{prefix}{unknown[0]}")
    for name in required:
        if body.get(name) is None:
            raise ValidationError(f"{prefix}{name} is required", field=f"{prefix}{name}")


def encode_cursor(task_id: int | None) -> str | None:
    """An opaque page cursor for clients (URL-safe base64 of the last id seen)."""
    if task_id is None:
        return None
    return base64.urlsafe_b64encode(str(task_id).encode("ascii")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id inside a cursor from ``encode_cursor``; anything else is a 422 on ``cursor``."""
    refused = ValidationError("cursor is not a cursor this API returned; use next_cursor as given",
                              field="cursor")
    if not CURSOR_PATTERN.match(cursor):
        raise refused
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise refused from None
    if not text.isdigit() or not 1 <= int(text) <= 2**63 - 1 or encode_cursor(int(text)) != cursor:
        raise refused
    return int(text)


def _single(args: MultiDict[str, str], name: str) -> str | None:
    values = args.getlist(name)
    if len(values) > 1:
        raise ValidationError(f"{name} may be given only once", field=name)
    if not values:
        return None
    return check_text(values[0], name)


def parse_list_query(args: MultiDict[str, str]) -> tuple[TaskFilter, int, int | None]:
    """Filters, page size and cursor id from the query string of ``GET /api/tasks``."""
    statuses = tuple(validate_status(check_text(value, "status")) for value in args.getlist("status"))
    task_type = _single(args, "task_type") or None
    created_by = _single(args, "created_by") or None
    search = _single(args, "search") or None
    after = _single(args, "created_after")
    before = _single(args, "created_before")
    limit_text = _single(args, "limit")
    cursor_text = _single(args, "cursor")
    limit = DEFAULT_PAGE_SIZE
    if limit_text is not None:
        if not re.fullmatch(r"[0-9]{1,4}", limit_text.strip()) or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
            raise ValidationError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit_text!r}",
                                  field="limit")
        limit = int(limit_text)
    filters = TaskFilter(
        task_type=task_type,
        statuses=statuses,
        created_by=created_by,
        created_after=parse_time(after, "created_after") if after is not None else None,
        created_before=parse_time(before, "created_before") if before is not None else None,
        search=search,
    )
    cursor = decode_cursor(cursor_text) if cursor_text is not None else None
    return filters, limit, cursor
