"""What differs between the databases, behind one interface: one module per database implements it.

``dialect_postgres`` (the statements written by hand, the database clock, LISTEN/NOTIFY wake-ups,
SKIP LOCKED) and ``dialect_sqlite`` (one machine, one write lock, Core statements). The engine's
writers ask ``SessionWriter.dialect`` (``dbsession.py``) instead of branching on the database's name, the way Oban
keeps a ``Basic`` and a ``Lite`` engine behind one behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .attempt import TaskInfo
from .direct import DirectConnection
from .limits import ClaimLimit
from .models import TaskEventKind

if TYPE_CHECKING:
    from .dialect_postgres import ResolvedSuccesses

Query = TypeVar("Query")


class TaskWriter(Protocol):
    """What a dialect needs from the engine's writer (``store.TaskStore``) to write events."""

    @property
    def session(self) -> Session: ...

    def now(self) -> ColumnElement[datetime]: ...

    def begin_write(self) -> None: ...

    def event(self, task_id: int, kind: TaskEventKind, **fields: Any) -> dict[str, Any]: ...

    def transition_event(self, name: str, task_id: int, **fields: Any) -> dict[str, Any]: ...

    def write_events(self, events: Sequence[dict[str, Any]]) -> None: ...


class Success(Protocol):
    """One successful attempt waiting to be written (``leases.FinishedAttempt`` fits)."""

    @property
    def task(self) -> TaskInfo: ...

    @property
    def result(self) -> Any: ...


class Dialect(Protocol):
    """The database-specific half of the engine's writes."""

    name: str
    # A lone submit may be one autocommit statement (task, event and wake-up together).
    submits_in_one_statement: bool
    # Dashboards may count big groups at scale (index range reads, page samples), not exactly.
    samples_counts: bool

    def now(self) -> ColumnElement[datetime]:
        """The current time as a SQL expression."""

    def now_plus(self, seconds: float) -> ColumnElement[datetime]:
        """``now() + seconds`` as a SQL expression."""

    def begin_write(self, session: Session) -> None:
        """Start a transaction that may write without being refused later."""

    def db_now(self, session: Session, engine_state: Callable[[], Any]) -> datetime:
        """Now by the database's clock, as a Python datetime (``engine_state`` keeps a measured offset)."""

    def skip_locked(self, query: Query, **options: Any) -> Query:
        """``query`` made to pass over rows another transaction holds, where the database can."""

    def whole_minutes_since(self, column: Any, start: datetime) -> ColumnElement[int]:
        """Whole minutes from ``start`` to ``column``, computed in the database."""

    def wake_consumers(self, session: Session) -> None:
        """Within the caller's transaction: signal other processes' consumers at commit."""

    def submit_in_one_statement(self, connection: Connection, row: dict[str, Any]) -> int:
        """Insert one task row with its event and wake-up in one autocommit statement; its id."""

    def insert_tasks(self, writer: TaskWriter, rows: list[dict[str, Any]]) -> list[int]:
        """Insert validated task rows with their SUBMITTED events; their ids, in input order."""

    def claim(self, writer: TaskWriter, worker_id: str, limit: int, types: list[str], token: str,
              direct: DirectConnection | None) -> Sequence[Any]:
        """Move up to ``limit`` due tasks to PROCESSING under ``token`` with their CLAIMED events."""

    def lock_unique(self, session: Session, key: str) -> None:
        """Within the caller's transaction: wait until no other submit of this ``unique`` key is in flight."""

    def payload_field_equals(self, field: str, value: Any) -> ColumnElement[bool]:
        """``async_task.payload``'s top-level ``field`` equals the JSON value ``value``."""

    def claim_limited(self, writer: TaskWriter, worker_id: str, limit: int, types: list[str],
                      limited: Sequence[ClaimLimit], token: str, direct: DirectConnection | None
                      ) -> Sequence[Any]:
        """``claim`` where some of ``types`` have limits (``limited``): tasks over a limit are skipped."""

    def succeed(self, writer: TaskWriter, successes: Sequence[Success], worker_id: str | None
                ) -> tuple[set[tuple[int, str]], set[tuple[int, str]]]:
        """Fenced SUCCESS of many attempts with events: (attempts that won, those with a cancel request)."""

    # Whether ``succeed_resolving`` exists: successes of workflow tasks counted and their
    # dependents released by the success statement itself (docs/workflows.md).
    resolves_in_succeed: bool

    def succeed_resolving(self, writer: TaskWriter, successes: Sequence[Success], worker_id: str | None
                          ) -> ResolvedSuccesses:
        """``succeed`` that also counts workflow tasks and releases their dependents, in one statement."""

