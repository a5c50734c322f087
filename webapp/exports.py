"""Exports of the task list, the audit log and notifications as CSV or JSON Lines, streamed.

One module for the console and the API (both thin over it). An export reads the filtered rows
newest first in keyset batches on a session of its own, turns each row into text and forgets
the batch, so memory stays flat whatever the row count; nothing holds a transaction open
between batches. Rows are the same views the API answers with (``tasks.serialize``), so
sensitive payload fields are masked here too. Starting an export writes an ``export.<kind>``
audit entry naming the format and the filter.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select
from sqlalchemy.orm import Session

from .extensions import db
from .notifications.queries import NotificationFilter, filtered_notifications
from .tasks.audit import record_audit
from .tasks.errors import ValidationError
from .tasks.models import AsyncTask, AuditEntry, Notification
from .tasks.queries import TaskFilter, filtered_query
from .tasks.serialize import TASK_FIELDS, iso, notification_to_dict, task_to_dict
from .tasks.stats import audit_query

BATCH_ROWS = 500
# A spreadsheet runs a cell starting with one of these as a formula; such text cells get a
# leading apostrophe in CSV (OWASP's advice), JSON Lines keeps the value as it is.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class ExportFormat(enum.StrEnum):
    """The file formats an export can be written in."""

    CSV = "csv"
    JSONL = "jsonl"

    @property
    def media_type(self) -> str:
        return "text/csv; charset=utf-8" if self is ExportFormat.CSV else "application/x-ndjson; charset=utf-8"


def parse_export_format(value: Any) -> ExportFormat:
    """``csv`` or ``jsonl`` exactly (``csv`` when absent), or a ValidationError on ``format``.

    Exact, as the OpenAPI document's enum says: an empty or differently cased value is refused
    rather than guessed at.
    """
    try:
        return ExportFormat("csv" if value is None else str(value))
    except ValueError:
        raise ValidationError(f"format must be csv or jsonl, not {str(value)[:40]!r}", field="format") from None


@dataclass(frozen=True)
class Export:
    """A started export: its kind, format and columns, and the rows to stream (read lazily)."""

    kind: str
    format: ExportFormat
    columns: tuple[str, ...]
    rows: Callable[[], Iterator[dict[str, Any]]]
    started_at: datetime

    @property
    def filename(self) -> str:
        return f"taskdeck-{self.kind}-{self.started_at.strftime('%Y%m%dT%H%M%SZ')}.{self.format.value}"

    def chunks(self) -> Iterator[str]:
        """The file's text, a batch of rows at a time (CSV starts with its header line)."""
        if self.format is ExportFormat.JSONL:
            lines: list[str] = []
            for row in self.rows():
                lines.append(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                if len(lines) >= BATCH_ROWS:
                    yield "".join(lines)
                    lines = []
            if lines:
                yield "".join(lines)
            return
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(self.columns)
        for count, row in enumerate(self.rows(), start=1):
            writer.writerow([_csv_cell(row.get(name)) for name in self.columns])
            if count % BATCH_ROWS == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    """A cell: objects and arrays as JSON text, None empty, formula-looking text defused."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def keyset_rows(query: Select[Any], id_column: Any, to_dict: Callable[[Any], dict[str, Any]],
                batch: int = BATCH_ROWS) -> Iterator[dict[str, Any]]:
    """Every row of ``query`` newest first, read ``batch`` rows at a time on a session of its own.

    Rows come back as plain column tuples (attribute access by column name, as the serializers
    use it), not ORM objects: building and tracking an object per row costs more than the rest.
    """
    columns = query.with_only_columns(*id_column.table.columns)
    with Session(db.engine) as session:
        cursor: int | None = None
        while True:
            page = columns if cursor is None else columns.where(id_column < cursor)
            rows = list(session.execute(page.order_by(id_column.desc()).limit(batch)))
            for row in rows:
                yield to_dict(row)
            if len(rows) < batch:
                return
            cursor = rows[-1].id
            session.rollback()  # ends the read: no snapshot or lock is held between batches


def _audit_export(actor: str | None, kind: str, export_format: ExportFormat, filters: dict[str, Any]) -> None:
    """The ``export.<kind>`` audit entry, committed before the first row is sent."""
    record_audit(actor, f"export.{kind}", "export", kind, detail={
        "format": export_format.value, "filters": {k: v for k, v in filters.items() if v not in (None, ())}})
    db.session.commit()


def _started(kind: str, export_format: ExportFormat, columns: tuple[str, ...], actor: str | None,
             filters: dict[str, Any], rows: Callable[[], Iterator[dict[str, Any]]]) -> Export:
    _audit_export(actor, kind, export_format, filters)
    return Export(kind, export_format, columns, rows, datetime.now(UTC))


TASK_COLUMNS = tuple(name for name, _ in TASK_FIELDS)
AUDIT_COLUMNS = ("id", "at", "actor", "action", "target_type", "target_id", "outcome", "detail")
NOTIFICATION_COLUMNS = ("id", "task_id", "type", "recipient", "subject", "status", "attempts", "max_attempts",
                        "next_attempt_at", "last_error", "created_at", "sent_at")


def export_tasks(filters: TaskFilter, export_format: ExportFormat, actor: str | None) -> Export:
    """Every task matching ``filters`` (the list's filter, an API token's reach included), audited."""
    described = {
        "task_type": filters.task_type, "status": filters.statuses, "created_by": filters.created_by,
        "created_after": iso(filters.created_after), "created_before": iso(filters.created_before),
        "priority_min": filters.priority_min, "priority_max": filters.priority_max, "id": filters.task_id,
        "search": filters.search, "principal": filters.principal}
    query = filtered_query(filters)
    return _started("tasks", export_format, TASK_COLUMNS, actor, described,
                    lambda: keyset_rows(query, AsyncTask.id, task_to_dict))


def audit_to_dict(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as plain JSON (time in ISO-8601 UTC)."""
    return {"id": entry.id, "at": iso(entry.at), "actor": entry.actor, "action": entry.action,
            "target_type": entry.target_type, "target_id": entry.target_id, "outcome": entry.outcome,
            "detail": entry.detail}


def export_audit(actor_filter: str | None, action_prefix: str | None, export_format: ExportFormat,
                 actor: str | None) -> Export:
    """Every audit entry of one actor / action prefix (both optional), audited itself."""
    query = audit_query(actor_filter, action_prefix)
    return _started("audit", export_format, AUDIT_COLUMNS, actor, {"actor": actor_filter, "action": action_prefix},
                    lambda: keyset_rows(query, AuditEntry.id, audit_to_dict))


def export_notifications(filters: NotificationFilter, export_format: ExportFormat, actor: str | None) -> Export:
    """Every notification matching ``filters`` (without bodies), audited."""
    query = filtered_notifications(filters)
    described = {"status": filters.statuses, "type": filters.type, "task_id": filters.task_id,
                 "recipient": filters.recipient}
    return _started("notifications", export_format, NOTIFICATION_COLUMNS, actor, described,
                    lambda: keyset_rows(query, Notification.id, notification_to_dict))
