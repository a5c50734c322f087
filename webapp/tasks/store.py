"""The base of every part of the task service: its session, registry, clock, timeline and audit.

Each concern of the engine (``submit``, ``leases``, ``actions``, ``maintenance``) is a
``TaskStore`` over the same session and registry; ``AsyncTaskService`` is the facade that
hands each call to the part it belongs to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

from flask import current_app
from sqlalchemy import insert
from sqlalchemy.orm import Session

from .audit import record_audit
from .dbsession import SessionWriter
from .errors import UnknownTaskType
from .models import TaskEvent, TaskEventKind
from .processor import TaskProcessor
from .registry import ProcessorRegistry
from .transitions import TRANSITIONS

log = logging.getLogger(__name__)

Part = TypeVar("Part", bound="TaskStore")

EVENT_COLUMNS = ("task_id", "kind", "at", "from_status", "to_status", "attempt", "worker_id",
                 "actor", "message", "traceback")


def engine_state() -> Any:
    """The engine object ``init_engine`` put on the current app."""
    return current_app.extensions["async_task"]


class TaskStore(SessionWriter):
    """A session, the app's processor registry, and the helpers every task writer shares."""

    def __init__(self, registry: ProcessorRegistry | None = None, session: Session | None = None) -> None:
        super().__init__(session)
        self.registry: ProcessorRegistry = registry if registry is not None else engine_state().registry

    def part(self, kind: type[Part]) -> Part:
        """Another part of the service over the same registry and session."""
        return kind(self.registry, self._session)

    def db_now(self) -> datetime:
        """Now by the database's clock (Python's clock corrected by a measured offset on PostgreSQL)."""
        return self.dialect.db_now(self.session, engine_state)

    def processor_for(self, task_type: str) -> TaskProcessor:
        """The processor of ``task_type``; ``UnknownTaskType`` naming the field otherwise."""
        processor = self.registry.get(task_type)
        if processor is None:
            raise UnknownTaskType(f"unknown task type {task_type!r}", field="task_type")
        return processor

    # -- the timeline and the audit log ---------------------------------------------------------

    def event(self, task_id: int, kind: TaskEventKind, **fields: Any) -> dict[str, Any]:
        """A ``task_event`` row stamped now (written by ``write_events``)."""
        row = {"task_id": task_id, "kind": kind.value, "at": self.db_now()}
        row.update(fields)
        return row

    def transition_event(self, name: str, task_id: int, **fields: Any) -> dict[str, Any]:
        """The event of the transition ``name``: kind and statuses from the transition table."""
        row = {"task_id": task_id, "at": self.db_now(), **TRANSITIONS[name].event_fields()}
        row.update(fields)
        return row

    def write_events(self, events: Sequence[dict[str, Any]]) -> None:
        """Insert event rows (one statement) in the current transaction."""
        if events:
            rows = [{key: event.get(key) for key in EVENT_COLUMNS} for event in events]
            self.session.execute(insert(TaskEvent), rows)

    def audit(self, actor: str | None, action: str, target_type: str | None, target_id: Any,
              outcome: str = "ok", detail: dict[str, Any] | None = None) -> None:
        """Record an operator action in the audit log (committed with the caller's transaction)."""
        record_audit(actor, action, target_type, target_id, outcome, detail, session=self.session)

    # -- committing work that consumers should see ----------------------------------------------

    def commit_new_work(self) -> None:
        """Commit a transaction that made tasks due, waking consumers everywhere.

        On PostgreSQL a ``NOTIFY`` inside the transaction is delivered to every listening
        consumer process at commit (one signal per commit, however many rows); consumers in
        this process are woken directly.
        """
        self.dialect.wake_consumers(self.session)
        self.session.commit()
        self.announce_new_work()

    def announce_new_work(self) -> None:
        """Wake this process's consumers now (best effort)."""
        try:
            engine_state().announce_new_work()
        except Exception:  # a wake-up is an optimisation; polling still finds the task
            log.exception("could not announce new work")
