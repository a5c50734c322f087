"""Bulk cancel / retry: of chosen ids, or of every task matching a ``TaskFilter``.

Each chunk is one conditional ``UPDATE ... WHERE id IN (...) AND status IN (allowed)
RETURNING id``, the same statement ``AsyncTaskService.cancel_task`` / ``retry_task`` run for
one id, with the same values, the same timeline event and the same per-task audit entry, so
a task racing a worker or another operator still has exactly one winner. Chunks commit one
by one, so a bulk action over many rows never holds SQLite's write lock for long. A summary
entry (``task.bulk_cancel`` / ``task.bulk_retry``) records the whole action.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from .errors import ValidationError
from .models import AsyncTask
from .queries import TaskFilter, filter_clauses
from .service import AsyncTaskService
from .transitions import starting_statuses
from .validation import validate_task_id

MAX_SELECTED_IDS = 5000
CHUNK_SIZE = 500


class BulkAction(enum.StrEnum):
    """What a bulk request does to each task that allows it."""

    CANCEL = "cancel"
    RETRY = "retry"

    @property
    def allowed_from(self) -> tuple[str, ...]:
        """Statuses this action changes; the rest of the selection is left alone.

        Bulk cancel changes waiting tasks only: a running task can merely be asked to stop
        (``AsyncTaskService.cancel_task`` on one task does that), which is not a bulk change
        of status an operator could preview.
        """
        return starting_statuses(self.value)


def parse_action(value: Any) -> BulkAction:
    """``cancel`` or ``retry``; anything else is a ValidationError naming the field."""
    try:
        return BulkAction(str(value or "").strip().lower())
    except ValueError:
        raise ValidationError(f"unknown bulk action {value!r}; expected cancel or retry",
                              field="action") from None


@dataclass(frozen=True)
class Selection:
    """Either explicit ids, or every task matching ``filters`` (never both)."""

    ids: tuple[int, ...] = ()
    filters: TaskFilter | None = None

    @classmethod
    def of_ids(cls, ids: Sequence[Any]) -> Selection:
        """Chosen task ids (validated, duplicates dropped, at most ``MAX_SELECTED_IDS``)."""
        unique = tuple(dict.fromkeys(validate_task_id(value, "ids") for value in ids))
        if len(unique) > MAX_SELECTED_IDS:
            raise ValidationError(f"at most {MAX_SELECTED_IDS} ids can be selected at once; "
                                  f"use 'all matching' with a filter instead", field="ids")
        return cls(ids=unique)

    @classmethod
    def matching(cls, filters: TaskFilter) -> Selection:
        """Every task matching ``filters`` at the time the action runs."""
        return cls(filters=filters)

    @property
    def is_matching(self) -> bool:
        return self.filters is not None

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for the audit log."""
        if self.filters is None:
            return {"ids": list(self.ids[:100]), "selected": len(self.ids)}
        described = {key: value for key, value in vars(self.filters).items() if value not in (None, ())}
        return {"filter": {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in described.items()}}


@dataclass(frozen=True)
class BulkPreview:
    """How many tasks are selected and how many each action would change right now."""

    total: int
    by_status: dict[str, int]
    changes: dict[BulkAction, int]
    missing_ids: int = 0

    @property
    def applicable(self) -> list[BulkAction]:
        """Actions that would change at least one task."""
        return [action for action in BulkAction if self.changes.get(action, 0) > 0]


@dataclass
class BulkResult:
    """What a bulk action changed."""

    action: BulkAction
    changed_ids: list[int] = field(default_factory=list)
    considered: int = 0

    @property
    def changed(self) -> int:
        return len(self.changed_ids)

    @property
    def unchanged(self) -> int:
        return max(0, self.considered - self.changed)


class BulkOperations:
    """Preview and apply bulk actions through the service's session and rules."""

    def __init__(self, service: AsyncTaskService | None = None) -> None:
        self.service = service or AsyncTaskService()

    def _where(self, selection: Selection) -> list[Any]:
        if selection.filters is not None:
            return filter_clauses(selection.filters)
        return [AsyncTask.id.in_(selection.ids)]

    def preview(self, selection: Selection) -> BulkPreview:
        """Counts per status of the selection, and what each action would change."""
        if not selection.is_matching and not selection.ids:
            return BulkPreview(0, {}, {action: 0 for action in BulkAction})
        rows = self.service.session.execute(
            select(AsyncTask.status, func.count()).where(*self._where(selection)).group_by(AsyncTask.status))
        by_status = {status: int(count) for status, count in rows}
        self.service.session.rollback()  # end the read snapshot; nothing was written
        total = sum(by_status.values())
        changes = {action: sum(by_status.get(s, 0) for s in action.allowed_from) for action in BulkAction}
        missing = 0 if selection.is_matching else len(selection.ids) - total
        return BulkPreview(total, by_status, changes, missing)

    def apply(self, selection: Selection, action: BulkAction, actor: str | None,
              chunk_size: int = CHUNK_SIZE) -> BulkResult:
        """Change every selected task the action allows; the others are left as they are."""
        result = BulkResult(action)
        for chunk in self._candidate_chunks(selection, action, chunk_size):
            result.considered += len(chunk)
            result.changed_ids.extend(self._apply_chunk(chunk, action, actor))
        if not selection.is_matching:
            result.considered = len(selection.ids)
        self.service.audit(actor, f"task.bulk_{action.value}", "task", None,
                           outcome="ok" if result.changed else "noop",
                           detail={**selection.describe(), "changed": result.changed,
                                   "unchanged": result.unchanged})
        self.service.session.commit()
        return result

    def _candidate_chunks(self, selection: Selection, action: BulkAction, chunk_size: int) -> Any:
        """Ids that may change, ascending, in chunks; bounded by the newest id at the start."""
        session = self.service.session
        if not selection.is_matching:
            ids = sorted(selection.ids)
            for start in range(0, len(ids), chunk_size):
                yield ids[start:start + chunk_size]
            return
        newest = session.scalar(select(func.max(AsyncTask.id)))
        session.rollback()
        if newest is None:
            return
        after = 0
        while True:
            chunk = list(session.scalars(
                select(AsyncTask.id)
                .where(*self._where(selection), AsyncTask.status.in_(action.allowed_from),
                       AsyncTask.id > after, AsyncTask.id <= newest)
                .order_by(AsyncTask.id).limit(chunk_size)))
            session.rollback()
            if not chunk:
                return
            yield chunk
            after = chunk[-1]

    def _apply_chunk(self, ids: list[int], action: BulkAction, actor: str | None) -> list[int]:
        service = self.service
        service.begin_write()
        # The same conditional updates and events as a single cancel or retry: one rule, one place.
        if action is BulkAction.CANCEL:
            changed = service.cancel_waiting(ids, actor, message="bulk cancel")
        else:
            changed = service.retry_failed(ids, actor, message="bulk retry")
        for task_id in changed:
            service.audit(actor, f"task.{action.value}", "task", task_id, detail={"via": "bulk"})
        if action is BulkAction.RETRY and changed:
            service.commit_new_work()
        else:
            service.session.commit()
        return changed
