"""``AsyncTaskService``: the one way in. Every state change of a task goes through here.

Each transition is a single conditional ``UPDATE ... WHERE status IN (...)`` (plus the claim
token where a worker's lease is involved), so cancel, retry, recovery and a worker's finish
racing each other have exactly one winner; the loser sees zero rows and gets a clear error.

Times: on PostgreSQL the database clock (``statement_timestamp()``) is used for every
comparison and stamp, so a worker whose own clock is wrong can neither claim delayed tasks
early nor recover live tasks. SQLite is one machine by nature, so Python's clock is used there.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from flask import current_app
from sqlalchemy import (
    JSON,
    Text,
    and_,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.sql.elements import ColumnElement

from .audit import record_audit
from .dbsession import SessionWriter
from .direct import DirectConnection, pyformat
from .errors import (
    InvalidPayload,
    InvalidTransition,
    TaskNotFound,
    UnknownTaskType,
    ValidationError,
)
from .models import (
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    AsyncTask,
    Notification,
    TaskEvent,
    TaskEventKind,
    TaskStatus,
    TaskTypeState,
    UTCDateTime,
    Worker,
    utcnow,
)
from .processor import TaskInfo, TaskProcessor, TaskResult
from .registry import ProcessorRegistry, payload_from_json
from .retry import next_retry_delay
from .transitions import may, refusal_message, starting_statuses

log = logging.getLogger(__name__)

WAKE_CHANNEL = "async_task_new_work"
ALL_TYPES = "*"  # pausing this pauses every task type
CLOCK_OFFSET_TTL = 60.0  # seconds between measurements of the database clock's offset

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_ERROR_LENGTH = 20_000
CLAIM_RETURNING = (
    AsyncTask.id,
    AsyncTask.task_type,
    AsyncTask.payload,
    AsyncTask.priority,
    AsyncTask.retry_count,
    AsyncTask.max_retry_count,
    AsyncTask.created_by,
    AsyncTask.created_at,
    AsyncTask.attempts,
    AsyncTask.claim_token,
    AsyncTask.retry_strategy,
    AsyncTask.retry_interval,
    AsyncTask.retry_max_delay,
    AsyncTask.retry_jitter,
    AsyncTask.notify_url,
)


# The claim on PostgreSQL, one round trip: pick due rows in claim order skipping rows other
# consumers hold (SKIP LOCKED), stamp the lease on them, and write their CLAIMED events.
CLAIM_SQL = """
WITH due AS (
    SELECT id FROM async_task
    WHERE status IN ('PENDING', 'RETRYING') AND next_run_at <= statement_timestamp()
      AND task_type = ANY(CAST(:types AS varchar[]))
    ORDER BY priority DESC, next_run_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE async_task AS t
    SET status = 'PROCESSING', claim_token = :token, worker_id = :worker,
        started_at = statement_timestamp(), updated_at = statement_timestamp(),
        attempts = t.attempts + 1, progress = NULL, progress_message = NULL
    FROM due WHERE t.id = due.id
    RETURNING t.id, t.task_type, t.payload, t.priority, t.retry_count, t.max_retry_count,
              t.created_by, t.created_at, t.attempts, t.claim_token, t.retry_strategy,
              t.retry_interval, t.retry_max_delay, t.retry_jitter, t.notify_url
), events AS (
    INSERT INTO task_event (task_id, at, kind, to_status, attempt, worker_id)
    SELECT id, statement_timestamp(), 'CLAIMED', 'PROCESSING', attempts, :worker FROM claimed
)
SELECT * FROM claimed
"""
CLAIM_SQL_POSTGRES = text(CLAIM_SQL).columns(created_at=UTCDateTime())
CLAIM_SQL_DIRECT = pyformat(CLAIM_SQL)


# Many successes in one round trip: fenced by each attempt's claim token, events included.
SUCCEED_SQL = """
WITH done AS (
    UPDATE async_task AS t
    SET status = 'SUCCESS', result = v.result, error = NULL, claim_token = NULL,
        finished_at = statement_timestamp(), updated_at = statement_timestamp()
    FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS text[]), CAST(:results AS jsonb[]))
         AS v(id, token, result)
    WHERE t.id = v.id AND t.claim_token = v.token AND t.status = 'PROCESSING'
    RETURNING t.id, v.token, t.attempts, t.cancel_requested_at
), events AS (
    INSERT INTO task_event (task_id, at, kind, from_status, to_status, attempt, worker_id)
    SELECT id, statement_timestamp(), 'SUCCEEDED', 'PROCESSING', 'SUCCESS', attempts, :worker FROM done
)
SELECT id, token, cancel_requested_at FROM done
"""
SUCCEED_SQL_POSTGRES = text(SUCCEED_SQL)
SUCCEED_SQL_DIRECT = pyformat(SUCCEED_SQL)


# Bulk submit on PostgreSQL: one array a column instead of one parameter a cell, which keeps
# a 1,000-task insert a single short statement; SUBMITTED events are written by the same call.
# Payloads travel as one JSON array (one string to send, no per-element array quoting) and are
# picked by position; the other columns are one typed array each.
BULK_INSERT_COLUMNS = {
    "task_type": "varchar", "priority": "integer", "max_retry_count": "integer",
    "retry_strategy": "varchar", "retry_interval": "float8", "retry_max_delay": "float8",
    "retry_jitter": "float8", "created_by": "varchar", "next_run_at": "timestamptz",
    "notify_url": "varchar",
}
BULK_INSERT_SQL_POSTGRES = text(
    "WITH new AS ("
    " INSERT INTO async_task (task_type, status, priority, payload, retry_count, max_retry_count,"
    " retry_strategy, retry_interval, retry_max_delay, retry_jitter, created_by, created_at,"
    " updated_at, next_run_at, attempts, recovery_count, notify_url)"
    " SELECT v.task_type, 'PENDING', v.priority, CAST(:payloads AS jsonb) -> CAST(v.position - 1 AS integer),"
    " 0, v.max_retry_count, v.retry_strategy,"
    " v.retry_interval, v.retry_max_delay, v.retry_jitter, v.created_by, CAST(:now AS timestamptz),"
    " CAST(:now AS timestamptz), v.next_run_at, 0, 0, v.notify_url"
    " FROM unnest(" + ", ".join(f"CAST(:c_{name} AS {kind}[])" for name, kind in BULK_INSERT_COLUMNS.items())
    + ") WITH ORDINALITY AS v(" + ", ".join(BULK_INSERT_COLUMNS) + ", position)"
    " ORDER BY v.position"
    " RETURNING id, created_by"
    "), events AS ("
    " INSERT INTO task_event (task_id, at, kind, to_status, actor)"
    " SELECT id, CAST(:now AS timestamptz), 'SUBMITTED', 'PENDING', created_by FROM new"
    ") SELECT id FROM new"
)


class TaskSnapshot(SimpleNamespace):
    """A task as it was written by ``submit_many``: the same attributes as ``AsyncTask``, untracked."""

    id: int
    status: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class SubmitOutcome:
    """A submitted task, and whether this call created it (False: idempotent repeat)."""

    task: AsyncTask
    created: bool


@dataclass(frozen=True)
class TaskFilter:
    """Filters shared by the API, the console and the CLI (all optional)."""

    task_type: str | None = None
    statuses: tuple[str, ...] = ()
    created_by: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    priority_min: int | None = None
    priority_max: int | None = None
    task_id: int | None = None
    search: str | None = None  # id, or text found in the error or the payload


@dataclass(frozen=True)
class TaskPage:
    """One keyset page of tasks, newest first; ``next_cursor`` is the id to continue below."""

    items: list[AsyncTask]
    next_cursor: int | None


@dataclass(frozen=True)
class FinishedAttempt:
    """A processor's verdict on one claimed attempt, waiting to be written."""

    task: TaskInfo
    result: TaskResult
    traceback: str | None = None


@dataclass(frozen=True)
class FinishOutcome:
    """What a worker's finish did: the status written, or ``None`` when the lease was lost."""

    status: str | None
    retry_delay: float | None = None


def engine_state() -> Any:
    """The engine object ``init_engine`` put on the current app."""
    return current_app.extensions["async_task"]


class AsyncTaskService(SessionWriter):
    """Submit, read, cancel and retry tasks; claim, finish and recover them for consumers.

    Construct it with no arguments inside an application context; it uses the app's
    processor registry and the Flask-SQLAlchemy session.
    """

    def __init__(self, registry: ProcessorRegistry | None = None, session: Session | None = None) -> None:
        super().__init__(session)
        self.registry: ProcessorRegistry = registry or engine_state().registry

    # -- helpers ---------------------------------------------------------------------------

    def db_now(self) -> datetime:
        """Now by the database's clock: Python's, corrected by an offset measured once a minute.

        Times written from Python (submit times, event times) must agree with the times the
        database compares them with (``statement_timestamp()``); a submitter whose clock runs
        ten minutes fast would otherwise delay its own tasks by ten minutes.
        """
        if not self.is_postgres:
            return utcnow()
        engine = engine_state()
        measured = time.monotonic()
        if engine.clock_offset is None or measured - engine.clock_offset[0] > CLOCK_OFFSET_TTL:
            with self.session.get_bind().engine.connect() as connection:
                before = utcnow()
                server = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
                after = utcnow()
            engine.clock_offset = (measured, server - (before + (after - before) / 2))
        return utcnow() + engine.clock_offset[1]

    def _event(self, task_id: int, kind: TaskEventKind, **fields: Any) -> dict[str, Any]:
        row = {"task_id": task_id, "kind": kind.value, "at": self.db_now()}
        row.update(fields)
        return row

    def _write_events(self, events: Sequence[dict[str, Any]]) -> None:
        if events:
            keys = ("task_id", "kind", "at", "from_status", "to_status", "attempt", "worker_id",
                    "actor", "message", "traceback")
            rows = [{key: event.get(key) for key in keys} for event in events]
            self.session.execute(insert(TaskEvent), rows)

    def audit(self, actor: str | None, action: str, target_type: str | None, target_id: Any,
              outcome: str = "ok", detail: dict[str, Any] | None = None) -> None:
        """Record an operator action in the audit log (committed with the caller's transaction)."""
        record_audit(actor, action, target_type, target_id, outcome, detail, session=self.session)

    def processor_for(self, task_type: str) -> TaskProcessor:
        processor = self.registry.get(task_type)
        if processor is None:
            raise UnknownTaskType(f"unknown task type {task_type!r}", field="task_type")
        return processor

    # -- submit ------------------------------------------------------------------------------

    def submit_task(
        self,
        task_type: str,
        payload: Any,
        priority: int | None = None,
        created_by: str | None = None,
        run_at: datetime | str | None = None,
        **options: Any,
    ) -> AsyncTask:
        """Queue a task and return it (status PENDING). Invalid input raises, writing nothing."""
        return self.submit(task_type, payload, priority, created_by, run_at, **options).task

    def submit(
        self,
        task_type: str,
        payload: Any,
        priority: int | None = None,
        created_by: str | None = None,
        run_at: datetime | str | None = None,
        *,
        idempotency_key: str | None = None,
        idempotency_scope: str | None = None,
        notify_url: str | None = None,
        parent_id: int | None = None,
        commit: bool = True,
    ) -> SubmitOutcome:
        """Like ``submit_task`` but says whether an idempotent repeat returned an existing task."""
        row = self._validated_row(task_type, payload, priority, created_by, run_at,
                                  idempotency_key, idempotency_scope, notify_url, parent_id)
        if commit and self._may_submit_in_one_statement():
            return self._submit_in_one_statement(row)
        # Before the idempotency lookup: on SQLite a read that is later upgraded to a write fails
        # with "database is locked" when another writer committed in between.
        self._begin_write()
        if idempotency_key is not None:
            existing = self._find_idempotent(idempotency_scope, idempotency_key)
            if existing is not None:
                return SubmitOutcome(existing, False)
        task = AsyncTask(**row)
        try:
            self.session.add(task)
            self.session.flush()
        except IntegrityError:
            # Two submits with one idempotency key raced; the other one won.
            self.session.rollback()
            existing = self._find_idempotent(idempotency_scope, idempotency_key)
            if existing is None:
                raise
            return SubmitOutcome(existing, False)
        self._write_events([self._event(task.id, TaskEventKind.SUBMITTED, to_status=task.status,
                                        actor=created_by)])
        if commit:
            # Every column was set here, so the detached object is complete: answering the caller
            # needs no reload after the commit.
            self.session.expunge(task)
            self._commit_new_work()
        return SubmitOutcome(task, True)

    def submit_many(self, items: Iterable[dict[str, Any]], *, idempotency_scope: str | None = None,
                    commit: bool = True) -> list[TaskSnapshot]:
        """Queue many tasks in one transaction; if any item is invalid, none is written.

        Each item is a mapping with the ``submit_task`` arguments (``task_type``, ``payload``,
        ``priority``, ``created_by``, ``run_at``, ``notify_url``). Errors name the item index.
        """
        rows = []
        allowed = {"task_type", "payload", "priority", "created_by", "run_at", "notify_url"}
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValidationError(f"item {index} must be an object", field=f"tasks[{index}]")
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise ValidationError(f"item {index} has unknown field {unknown[0]!r}",
                                      field=f"tasks[{index}].{unknown[0]}")
            try:
                rows.append(self._validated_row(
                    item.get("task_type"), item.get("payload"), item.get("priority"),
                    item.get("created_by"), item.get("run_at"), None, idempotency_scope,
                    item.get("notify_url"), None))
            except ValidationError as exc:
                field = f"tasks[{index}].{exc.field}" if exc.field else f"tasks[{index}]"
                raise type(exc)(f"item {index}: {exc.message}", field=field) from None
        if not rows:
            return []
        self._begin_write()
        if self.is_postgres:
            ids = self._insert_many_postgres(rows)
        else:
            ids = list(self.session.execute(
                insert(AsyncTask).returning(AsyncTask.id, sort_by_parameter_order=True), rows).scalars())
            self._write_events([
                self._event(task_id, TaskEventKind.SUBMITTED, to_status=TaskStatus.PENDING.value,
                            actor=row.get("created_by"))
                for task_id, row in zip(ids, rows, strict=True)
            ])
        if commit:
            self._commit_new_work()
        # Plain snapshots, not ORM instances: building 1,000 tracked objects costs more than the insert.
        return [TaskSnapshot(id=task_id, **row) for task_id, row in zip(ids, rows, strict=True)]

    def _may_submit_in_one_statement(self) -> bool:
        """PostgreSQL, and no transaction or pending change of the caller's that a commit would end."""
        session = self.session
        return (self.is_postgres and not session.in_transaction()
                and not (session.new or session.dirty or session.deleted))

    def _submit_in_one_statement(self, row: dict[str, Any]) -> SubmitOutcome:
        """Insert the task, its SUBMITTED event and the wake-up ``pg_notify`` as one autocommit statement.

        The ORM path costs six round trips (pool ping, BEGIN, INSERT, event INSERT, NOTIFY,
        COMMIT); one statement is atomic by itself, so it needs no BEGIN/COMMIT, and the notify
        is delivered when it commits, exactly like a NOTIFY inside a transaction. With an
        idempotency key the existing task is looked up first (one more statement), and a
        concurrent submit that wins the unique key in between is found and returned as before.
        """
        session = self.session
        key, scope = row["idempotency_key"], row["idempotency_scope"]
        sql, json_columns = _one_statement_submit_sql(tuple(row))
        params = {name: json.dumps(value) if name in json_columns else value for name, value in row.items()}
        params["event_kind"] = TaskEventKind.SUBMITTED.value
        connection = session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        try:
            if key is not None:
                existing = self._find_idempotent(scope, key)
                if existing is not None:
                    # Fully loaded by the lookup; detached so the autocommit connection goes
                    # back to the pool now and later work on the session is transactional again.
                    session.expunge(existing)
                    session.commit()
                    return SubmitOutcome(existing, False)
            # Plain driver SQL, built once per column set: compiling a Core CTE per request cost
            # more CPU than the round trip it saves.
            task_id = connection.exec_driver_sql(sql, params).scalar_one()
        except IntegrityError:
            session.rollback()
            if key is None:
                raise
            # Two submits with one idempotency key raced; the other one won.
            existing = self._find_idempotent(scope, key)
            if existing is None:
                raise
            return SubmitOutcome(existing, False)
        except BaseException:
            session.rollback()
            raise
        session.commit()  # committed already (autocommit); this hands the connection back
        # Every column was set from ``row``: a detached instance is as complete as a reloaded one.
        task = AsyncTask(**row)
        task.id = task_id
        make_transient_to_detached(task)
        self._announce_new_work()
        return SubmitOutcome(task, True)

    def _insert_many_postgres(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert validated rows column-wise (one array per column) with their SUBMITTED events.

        Ids come from the sequence in the order the SELECT feeds rows (ordered by position), so
        the ascending ids returned match the input order.
        """
        params: dict[str, Any] = {f"c_{name}": [row[name] for row in rows] for name in BULK_INSERT_COLUMNS}
        params["payloads"] = json.dumps([row["payload"] for row in rows])
        params["now"] = rows[0]["created_at"]
        ids = self.session.execute(BULK_INSERT_SQL_POSTGRES, params).scalars().all()
        return sorted(ids)

    def _find_idempotent(self, scope: str | None, key: str | None) -> AsyncTask | None:
        scope_clause = AsyncTask.idempotency_scope.is_(None) if scope is None else AsyncTask.idempotency_scope == scope
        return self.session.scalars(
            select(AsyncTask).where(scope_clause, AsyncTask.idempotency_key == key)
        ).first()

    def _validated_row(self, task_type: Any, payload: Any, priority: Any, created_by: Any, run_at: Any,
                       idempotency_key: Any, idempotency_scope: Any, notify_url: Any,
                       parent_id: Any) -> dict[str, Any]:
        if not isinstance(task_type, str) or not task_type.strip():
            raise ValidationError("task_type is required and must be a non-empty string", field="task_type")
        processor = self.processor_for(task_type)
        data, typed = self._validated_payload(processor, payload)
        priority = self._validated_priority(processor, typed, priority)
        if created_by is not None and (not isinstance(created_by, str) or len(created_by) > 255):
            raise ValidationError("created_by must be a string of at most 255 characters", field="created_by")
        for name, value in (("created_by", created_by), ("idempotency_key", idempotency_key),
                            ("notify_url", notify_url)):
            problem = _unstorable_text(value) if isinstance(value, str) else None
            if problem:
                raise ValidationError(f"{name} {problem}", field=name)
        now = self.db_now()
        next_run_at = now
        if run_at is not None:
            next_run_at = parse_time(run_at, "run_at")
        if idempotency_key is not None and (
            not isinstance(idempotency_key, str) or not idempotency_key or len(idempotency_key) > 200
        ):
            raise ValidationError("idempotency_key must be a string of 1 to 200 characters",
                                  field="idempotency_key")
        if notify_url is not None:
            from .notify import validate_webhook_url

            validate_webhook_url(notify_url, field="notify_url")
        config = processor.get_retry_config()
        return {
            "task_type": task_type,
            "status": TaskStatus.PENDING.value,
            "priority": priority,
            "payload": data,
            "retry_count": 0,
            "max_retry_count": config.max_retry_count,
            "retry_strategy": config.strategy.value,
            "retry_interval": float(config.base_interval),
            "retry_max_delay": config.max_delay,
            "retry_jitter": config.jitter,
            "created_by": created_by,
            "created_at": now,
            "updated_at": now,
            "next_run_at": next_run_at,
            "idempotency_key": idempotency_key,
            "idempotency_scope": idempotency_scope if idempotency_key is not None else None,
            "notify_url": notify_url,
            "parent_id": parent_id,
            "attempts": 0,
            "recovery_count": 0,
            # Columns a new task leaves empty, set explicitly so a returned object is complete.
            "result": None,
            "error": None,
            "started_at": None,
            "finished_at": None,
            "claim_token": None,
            "worker_id": None,
            "progress": None,
            "progress_message": None,
            "cancel_requested_at": None,
        }

    def _validated_payload(self, processor: TaskProcessor, payload: Any) -> tuple[dict[str, Any], Any]:
        payload_type = processor.payload_type
        if payload_type is not None and isinstance(payload, payload_type):
            data = asdict(payload) if is_dataclass(payload) else payload.model_dump()  # type: ignore[arg-type,attr-defined,union-attr]
        elif isinstance(payload, dict):
            data = payload
        elif is_dataclass(payload) and not isinstance(payload, type):
            raise InvalidPayload(
                f"payload is a {type(payload).__name__}, but task type {processor.get_task_type()!r} "
                f"expects {getattr(payload_type, '__name__', 'a JSON object')}", field="payload")
        else:
            raise InvalidPayload(f"payload must be a JSON object, got {type(payload).__name__}",
                                 field="payload")
        try:
            encoded = json.dumps(data, allow_nan=False, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidPayload(f"payload is not JSON-serialisable: {exc}", field="payload") from None
        if any(not isinstance(key, str) for key in data):
            raise InvalidPayload("payload keys must be strings", field="payload")
        problem = _unstorable_text(data)
        if problem:
            raise InvalidPayload(f"payload {problem}", field="payload")
        data = json.loads(encoded)  # a plain JSON copy: what is stored is what the worker gets
        typed = payload_from_json(payload_type, data) if payload_type is not None else data
        return data, typed

    def _validated_priority(self, processor: TaskProcessor, typed_payload: Any, priority: Any) -> int:
        if priority is None:
            priority = processor.get_priority(typed_payload)
            if priority is None:
                return 0
            source = f"{type(processor).__name__}.get_priority()"
        else:
            source = "priority"
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError(f"{source} must be an integer, got {priority!r}", field="priority")
        if not INT32_MIN <= priority <= INT32_MAX:
            raise ValidationError(f"{source} must be between {INT32_MIN} and {INT32_MAX}", field="priority")
        return priority

    def _commit_new_work(self) -> None:
        """Commit a transaction that made tasks due, waking consumers everywhere.

        On PostgreSQL a ``NOTIFY`` inside the transaction is delivered to every listening
        consumer process at commit (one signal per commit, however many rows); consumers in
        this process are woken directly.
        """
        if self.is_postgres:
            self.session.execute(text(f"NOTIFY {WAKE_CHANNEL}"))
        self.session.commit()
        self._announce_new_work()

    def _announce_new_work(self) -> None:
        try:
            engine_state().announce_new_work()
        except Exception:  # a wake-up is an optimisation; polling still finds the task
            log.exception("could not announce new work")

    # -- read --------------------------------------------------------------------------------

    def get_task(self, task_id: Any) -> AsyncTask | None:
        """The task with that id, or ``None``."""
        return self.session.get(AsyncTask, validate_task_id(task_id))

    def require_task(self, task_id: Any) -> AsyncTask:
        task = self.get_task(task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        return task

    def get_tasks_by_type(self, task_type: str, status: str | None = None, limit: int = 100,
                          before_id: int | None = None) -> list[AsyncTask]:
        """Tasks of one type (optionally one status), newest first."""
        statuses = (validate_status(status),) if status is not None else ()
        return self.list_tasks(TaskFilter(task_type=task_type, statuses=statuses), limit, before_id).items

    def filtered_query(self, filters: TaskFilter) -> Any:
        query = select(AsyncTask)
        return query.where(*self._filter_clauses(filters))

    def _filter_clauses(self, filters: TaskFilter) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = []
        if filters.task_type:
            clauses.append(AsyncTask.task_type == filters.task_type)
        if filters.statuses:
            clauses.append(AsyncTask.status.in_([validate_status(s) for s in filters.statuses]))
        if filters.created_by:
            clauses.append(AsyncTask.created_by == filters.created_by)
        if filters.created_after is not None:
            clauses.append(AsyncTask.created_at >= filters.created_after)
        if filters.created_before is not None:
            clauses.append(AsyncTask.created_at < filters.created_before)
        if filters.priority_min is not None:
            clauses.append(AsyncTask.priority >= filters.priority_min)
        if filters.priority_max is not None:
            clauses.append(AsyncTask.priority <= filters.priority_max)
        if filters.task_id is not None:
            clauses.append(AsyncTask.id == filters.task_id)
        if filters.search:
            clauses.append(self._search_clause(filters.search))
        return clauses

    def _search_clause(self, search: str) -> ColumnElement[bool]:
        """Text in the error or the payload (trigram-indexed on PostgreSQL), or the task's id."""
        if len(search) > 200:
            raise ValidationError("search must be at most 200 characters", field="search")
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        payload_text = cast(AsyncTask.payload, Text)
        matches = or_(AsyncTask.error.ilike(pattern, escape="\\"), payload_text.ilike(pattern, escape="\\"))
        if search.strip().isdigit() and len(search.strip()) < 19:
            matches = or_(matches, AsyncTask.id == int(search.strip()))
        return matches

    def list_tasks(self, filters: TaskFilter | None = None, limit: int = 50,
                   cursor: int | None = None) -> TaskPage:
        """A keyset page of tasks matching ``filters``, newest first, continuing below ``cursor``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
            raise ValidationError("limit must be an integer from 1 to 500", field="limit")
        query = self.filtered_query(filters or TaskFilter())
        if cursor is not None:
            query = query.where(AsyncTask.id < validate_task_id(cursor, "cursor"))
        rows = list(self.session.scalars(query.order_by(AsyncTask.id.desc()).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return TaskPage(rows, rows[-1].id if more and rows else None)

    def events_for(self, task_id: int) -> list[TaskEvent]:
        return list(self.session.scalars(
            select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)))

    def count_by_status(self, task_type: str | None = None) -> dict[str, int]:
        query = select(AsyncTask.status, func.count()).group_by(AsyncTask.status)
        if task_type is not None:
            query = query.where(AsyncTask.task_type == task_type)
        counts = {status.value: 0 for status in TaskStatus}
        counts.update({status: count for status, count in self.session.execute(query)})
        return counts

    # -- operator transitions ----------------------------------------------------------------

    def cancel_task(self, task_id: Any, actor: str | None = None) -> AsyncTask:
        """PENDING or RETRYING -> CANCELLED at once; PROCESSING -> a cancel request.

        A running task cannot be stopped from outside: the request is recorded
        (``cancel_requested_at``) and the processor sees it through ``is_cancel_requested()`` or
        ``report_progress``; if it ignores it, the task ends normally and the request is recorded
        as too late. SUCCESS, FAILURE and CANCELLED tasks are refused with InvalidTransition.
        """
        task_id = validate_task_id(task_id)
        self.session.rollback()
        self._begin_write()
        if not self.cancel_waiting([task_id], actor):
            return self._request_cancel(task_id, actor)
        if actor is not None:
            self.audit(actor, "task.cancel", "task", task_id)
        self.session.commit()
        return self.require_task(task_id)

    def cancel_waiting(self, task_ids: Sequence[int], actor: str | None, message: str | None = None) -> list[int]:
        """PENDING/RETRYING -> CANCELLED for these ids, with their events; the ids that changed.

        No commit: ``cancel_task`` and bulk cancel (``bulk.py``) add their audit and commit.
        """
        now = self._now()
        changed = sorted(self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(task_ids), AsyncTask.status.in_(starting_statuses("cancel")))
            .values(status=TaskStatus.CANCELLED.value, finished_at=now, updated_at=now,
                    claim_token=None, worker_id=None)
            .returning(AsyncTask.id)
            .execution_options(synchronize_session=False)
        ).scalars().all())
        self._write_events([self._event(task_id, TaskEventKind.CANCELLED, to_status=TaskStatus.CANCELLED.value,
                                        actor=actor, message=message) for task_id in changed])
        return changed

    def _request_cancel(self, task_id: int, actor: str | None) -> AsyncTask:
        requested = self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id == task_id, AsyncTask.status.in_(starting_statuses("request_cancel")),
                   AsyncTask.cancel_requested_at.is_(None))
            .values(cancel_requested_at=self._now(), updated_at=self._now())
            .returning(AsyncTask.attempts)
            .execution_options(synchronize_session=False)
        ).first()
        if requested is None:
            self.session.rollback()
            task = self.get_task(task_id)
            if task is not None and may("request_cancel", task.status):
                return task  # already requested: asking twice changes nothing
            if task is not None and may("cancel", task.status):
                # The attempt ended (retry scheduled, released, recovered) between our two
                # statements: the task is cancellable again, so cancel it rather than refuse.
                return self.cancel_task(task_id, actor)
            self._refuse(task_id, actor, "cancel")
        self._write_events([self._event(task_id, TaskEventKind.CANCEL_REQUESTED, actor=actor,
                                        attempt=requested.attempts if requested else None,
                                        message="cancel requested while running; the processor "
                                                "decides when to stop")])
        if actor is not None:
            self.audit(actor, "task.cancel_request", "task", task_id)
        self.session.commit()
        return self.require_task(task_id)

    def resubmit_task(self, task_id: Any, payload: Any, actor: str | None = None) -> AsyncTask:
        """Edit and retry: a new task with ``payload`` linked to a FAILURE or CANCELLED original.

        The original row is never changed; both timelines record the link.
        """
        original = self.require_task(task_id)
        if not may("resubmit", original.status):
            raise InvalidTransition(refusal_message("resubmit", original.status, original.id),
                                    current_status=original.status)
        outcome = self.submit(original.task_type, payload, original.priority, original.created_by,
                              notify_url=original.notify_url, parent_id=original.id, commit=False)
        new_task = outcome.task
        self._write_events([self._event(original.id, TaskEventKind.RESUBMITTED, actor=actor,
                                        message=f"edited and resubmitted as task {new_task.id}")])
        if actor is not None:
            self.audit(actor, "task.resubmit", "task", original.id, detail={"new_task_id": new_task.id})
        new_id = new_task.id
        self._commit_new_work()
        return self.require_task(new_id)

    def pause_task_type(self, task_type: str, actor: str | None = None) -> None:
        """Stop claiming ``task_type`` ('*' pauses every type); submissions still queue."""
        self._set_paused(task_type, True, actor)

    def resume_task_type(self, task_type: str, actor: str | None = None) -> None:
        """Claim ``task_type`` again ('*' lifts the pause of everything)."""
        self._set_paused(task_type, False, actor)

    def _set_paused(self, task_type: str, paused: bool, actor: str | None) -> None:
        if task_type != ALL_TYPES:
            self.processor_for(task_type)
        self._begin_write()
        state = self.session.get(TaskTypeState, task_type)
        if state is None:
            state = TaskTypeState(task_type=task_type)
            self.session.add(state)
        state.paused = paused
        state.changed_at = self.db_now()
        state.changed_by = actor
        self.audit(actor, "task_type.pause" if paused else "task_type.resume", "task_type", task_type)
        if paused:
            self.session.commit()
        else:
            self._commit_new_work()
        engine_state().paused_cache = None

    def retry_task(self, task_id: Any, actor: str | None = None) -> AsyncTask:
        """FAILURE -> PENDING with the retry count back at 0. Any other status is refused."""
        task_id = validate_task_id(task_id)
        self._begin_write()
        if not self.retry_failed([task_id], actor):
            self.session.rollback()
            self._refuse(task_id, actor, "retry")
        if actor is not None:
            self.audit(actor, "task.retry", "task", task_id)
        self._commit_new_work()
        return self.require_task(task_id)

    def retry_failed(self, task_ids: Sequence[int], actor: str | None, message: str | None = None) -> list[int]:
        """FAILURE -> PENDING (retry count back at 0) for these ids, with events; the ids that changed.

        No commit: ``retry_task`` and bulk retry (``bulk.py``) add their audit and commit.
        """
        now = self._now()
        changed = sorted(self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(task_ids), AsyncTask.status.in_(starting_statuses("retry")))
            .values(status=TaskStatus.PENDING.value, retry_count=0, recovery_count=0,
                    next_run_at=now, updated_at=now, finished_at=None, started_at=None,
                    claim_token=None, worker_id=None)
            .returning(AsyncTask.id)
            .execution_options(synchronize_session=False)
        ).scalars().all())
        self._write_events([self._event(task_id, TaskEventKind.RETRIED, from_status=TaskStatus.FAILURE.value,
                                        to_status=TaskStatus.PENDING.value, actor=actor, message=message)
                            for task_id in changed])
        return changed

    def _refuse(self, task_id: int, actor: str | None, action: str) -> None:
        if actor is not None:
            # The refusal is audited: on SQLite a read later upgraded to a write can fail with
            # "database is locked", so take the write lock before reading.
            self.session.rollback()
            self._begin_write()
        task = self.get_task(task_id)
        if task is None:
            raise TaskNotFound(f"task {task_id} does not exist")
        if actor is not None:
            self.audit(actor, f"task.{action}", "task", task_id, outcome="refused",
                       detail={"status": task.status})
            self.session.commit()
        raise InvalidTransition(refusal_message(action, task.status, task_id), current_status=task.status)

    # -- consumer side: claim, finish, release -----------------------------------------------

    def paused_task_types(self) -> list[str]:
        return list(self.session.scalars(select(TaskTypeState.task_type).where(TaskTypeState.paused)))

    def claim_due_tasks(self, worker_id: str, limit: int, task_types: Sequence[str] | None = None,
                        direct: DirectConnection | None = None) -> list[TaskInfo]:
        """Atomically move up to ``limit`` due waiting tasks to PROCESSING for ``worker_id``.

        One statement: ``UPDATE ... WHERE id IN (SELECT id ... ORDER BY priority DESC,
        next_run_at, id LIMIT n [FOR UPDATE SKIP LOCKED]) RETURNING ...``. On PostgreSQL,
        SKIP LOCKED lets concurrent consumers take disjoint rows without waiting on each other;
        on SQLite the statement runs under the database's single write lock (BEGIN IMMEDIATE).
        Every claimed row gets a fresh ``claim_token``: the fencing token its finish must show.
        """
        if limit < 1:
            return []
        types = list(self.registry.task_types() if task_types is None else task_types)
        paused = self.paused_task_types_cached()
        types = [] if ALL_TYPES in paused else [t for t in types if t not in paused]
        self.session.rollback()  # end any read snapshot so the write starts fresh
        if not types:
            return []
        token = uuid.uuid4().hex
        if self.is_postgres:
            # The claim must walk ix_async_task_due in order and stop after `limit` rows. Right
            # after a burst of submits, before autovacuum has analysed the table, the planner
            # believes the table is tiny and sorts every due row instead (tens of ms, spilling
            # to disk, for each claim); forbidding the sort for this one transaction keeps the
            # ordered index scan whatever the statistics say.
            params = {"types": types, "limit": limit, "token": token, "worker": worker_id}
            rows: Sequence[Any]
            if direct is not None:  # a consumer's own autocommit connection: one round trip
                rows = [row._replace(created_at=row.created_at.astimezone(UTC))
                        for row in direct.execute(CLAIM_SQL_DIRECT, params)]
            else:
                self.session.execute(text("SET LOCAL enable_sort = off"))
                rows = self.session.execute(CLAIM_SQL_POSTGRES, params).all()
        else:
            rows = self._claim_sqlite(worker_id, limit, types, token)
        claimed = [
            TaskInfo(id=r.id, task_type=r.task_type, payload=r.payload, priority=r.priority,
                     retry_count=r.retry_count, max_retry_count=r.max_retry_count,
                     created_by=r.created_by, created_at=r.created_at, attempt=r.attempts,
                     claim_token=r.claim_token, retry_strategy=r.retry_strategy,
                     retry_interval=r.retry_interval, retry_max_delay=r.retry_max_delay,
                     retry_jitter=r.retry_jitter, notify_url=r.notify_url)
            for r in rows
        ]
        claimed.sort(key=lambda t: (-t.priority, t.id))
        self.session.commit()
        return claimed

    def _claim_sqlite(self, worker_id: str, limit: int, types: list[str], token: str) -> Sequence[Any]:
        # Look before taking the database's only write lock: idle consumers polling an empty
        # queue must not queue up behind each other and the web process's writes.
        anything_due = self.session.execute(
            select(AsyncTask.id)
            .where(AsyncTask.status.in_(WAITING_STATUSES), AsyncTask.next_run_at <= literal(utcnow(), UTCDateTime()),
                   AsyncTask.task_type.in_(types))
            .limit(1)
        ).first()
        self.session.rollback()
        if anything_due is None:
            return []
        self._begin_write()
        now = self._now()
        due = (
            select(AsyncTask.id)
            .where(AsyncTask.status.in_(WAITING_STATUSES), AsyncTask.next_run_at <= now,
                   AsyncTask.task_type.in_(types))
            .order_by(AsyncTask.priority.desc(), AsyncTask.next_run_at, AsyncTask.id)
            .limit(limit)
        )
        rows = self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id.in_(due.scalar_subquery()), AsyncTask.status.in_(WAITING_STATUSES))
            .values(status=TaskStatus.PROCESSING.value, claim_token=token, worker_id=worker_id,
                    started_at=now, updated_at=now, attempts=AsyncTask.attempts + 1,
                    progress=None, progress_message=None)
            .returning(*CLAIM_RETURNING)
            .execution_options(synchronize_session=False)
        ).all()
        self._write_events([
            self._event(r.id, TaskEventKind.CLAIMED, to_status=TaskStatus.PROCESSING.value,
                        attempt=r.attempts, worker_id=worker_id)
            for r in rows
        ])
        return rows

    def paused_task_types_cached(self) -> set[str]:
        """Paused task types, re-read at most once a second (claims run many times a second)."""
        engine = engine_state()
        now = time.monotonic()
        if engine.paused_cache is None or now - engine.paused_cache[0] > 1.0:
            engine.paused_cache = (now, set(self.paused_task_types()))
        return set(engine.paused_cache[1])

    def finish_task(self, task: TaskInfo, result: TaskResult, *, worker_id: str | None = None,
                    traceback: str | None = None) -> FinishOutcome:
        """Write a worker's outcome, only if its lease (``claim_token``) still holds.

        Runs in the session the processor used, so the processor's own writes and the final
        status commit together; if the lease was lost (the task was recovered and claimed again,
        or cancelled), everything is rolled back and the late result is recorded as refused.
        """
        self._begin_write()
        outcome = self._apply_outcome(task, result, worker_id, traceback)
        if outcome is None:
            self.session.rollback()
            self._record_late_result(task, result, worker_id)
            return FinishOutcome(None)
        self.session.commit()
        return outcome

    def finish_many(self, finished: Sequence[FinishedAttempt], *, worker_id: str | None = None,
                    direct: DirectConnection | None = None) -> list[FinishOutcome]:
        """Finish many attempts in one transaction (processors that wrote nothing themselves).

        Successes, the common case, are one statement for the whole batch on PostgreSQL
        (``UPDATE ... FROM unnest(ids, tokens, results)``), still fenced by each claim token;
        failures take the single-task path inside the same transaction. Returns one outcome per
        input, in order; ``status=None`` where the lease had been lost.
        """
        if (direct is not None and self.is_postgres and all(f.result.success for f in finished)
                and not any(self._notification_may_be_needed(f.task) for f in finished)):
            return self._succeed_directly(finished, worker_id, direct)
        self.session.rollback()
        self._begin_write()
        successes = [f for f in finished if f.result.success]
        won = self._succeed_in_bulk(successes, worker_id)
        # Keyed by attempt (id, claim token), not task id: one batch can hold a task's stale
        # attempt (recovered while its outcome queued) next to its new attempt.
        outcomes: dict[tuple[int, str], FinishOutcome] = {}
        for item in successes:
            if _attempt_key(item.task) in won:
                outcomes[_attempt_key(item.task)] = FinishOutcome(TaskStatus.SUCCESS.value)
                self._queue_notifications_if_wanted(item.task, TaskStatus.SUCCESS.value, item.result)
        for item in finished:
            if not item.result.success:
                outcome = self._apply_outcome(item.task, item.result, worker_id, item.traceback)
                if outcome is not None:
                    outcomes[_attempt_key(item.task)] = outcome
        self.session.commit()
        for item in finished:
            if _attempt_key(item.task) not in outcomes:
                self._record_late_result(item.task, item.result, worker_id)
        return [outcomes.get(_attempt_key(item.task), FinishOutcome(None)) for item in finished]

    def _succeed_directly(self, finished: Sequence[FinishedAttempt], worker_id: str | None,
                          direct: DirectConnection) -> list[FinishOutcome]:
        """The common batch (all successes, nobody to notify): one autocommit statement."""
        rows = direct.execute(SUCCEED_SQL_DIRECT, {
            "ids": [f.task.id for f in finished], "tokens": [f.task.claim_token for f in finished],
            "results": [json.dumps(_json_result(f.result.data)) for f in finished], "worker": worker_id})
        won = {(row.id, row.token) for row in rows}
        too_late = [f for f in finished if (f.task.id, f.task.claim_token) in
                    {(row.id, row.token) for row in rows if row.cancel_requested_at is not None}]
        if too_late:
            self._begin_write()
            self._write_events([self._cancel_too_late(f.task, TaskStatus.SUCCESS.value, worker_id)
                                for f in too_late])
            self.session.commit()
        outcomes = []
        for item in finished:
            if _attempt_key(item.task) in won:
                outcomes.append(FinishOutcome(TaskStatus.SUCCESS.value))
            else:
                self._record_late_result(item.task, item.result, worker_id)
                outcomes.append(FinishOutcome(None))
        return outcomes

    def _succeed_in_bulk(self, successes: Sequence[FinishedAttempt], worker_id: str | None
                         ) -> set[tuple[int, str]]:
        """Fenced SUCCESS of many attempts; returns the (task id, claim token) of those that won."""
        if not successes:
            return set()
        won: set[tuple[int, str]]
        too_late: set[tuple[int, str]]
        if self.is_postgres:
            rows = self.session.execute(SUCCEED_SQL_POSTGRES, {
                "ids": [f.task.id for f in successes], "tokens": [f.task.claim_token for f in successes],
                "results": [json.dumps(_json_result(f.result.data)) for f in successes],
                "worker": worker_id}).all()
            won = {(row.id, row.token) for row in rows}
            too_late = {(row.id, row.token) for row in rows if row.cancel_requested_at is not None}
        else:
            won, too_late = set(), set()
            now = self._now()
            for item in successes:
                changed = self.session.execute(
                    update(AsyncTask)
                    .where(AsyncTask.id == item.task.id, AsyncTask.claim_token == item.task.claim_token,
                           AsyncTask.status == TaskStatus.PROCESSING.value)
                    .values(status=TaskStatus.SUCCESS.value, result=_json_result(item.result.data),
                            error=None, finished_at=now, updated_at=now, claim_token=None)
                    .returning(AsyncTask.cancel_requested_at).execution_options(synchronize_session=False)
                ).first()
                if changed is not None:
                    won.add(_attempt_key(item.task))
                    if changed.cancel_requested_at is not None:
                        too_late.add(_attempt_key(item.task))
            self._write_events([
                self._event(item.task.id, TaskEventKind.SUCCEEDED, from_status="PROCESSING",
                            to_status=TaskStatus.SUCCESS.value, attempt=item.task.attempt, worker_id=worker_id)
                for item in successes if _attempt_key(item.task) in won])
        self._write_events([self._cancel_too_late(item.task, TaskStatus.SUCCESS.value, worker_id)
                            for item in successes if _attempt_key(item.task) in too_late])
        return won

    def _apply_outcome(self, task: TaskInfo, result: TaskResult, worker_id: str | None,
                       traceback: str | None) -> FinishOutcome | None:
        """The fenced UPDATE of one attempt's outcome plus its event (no commit); None if fenced out."""
        now = self._now()
        values: dict[str, Any] = {"updated_at": now}
        retry_delay: float | None = None
        if result.success:
            status = TaskStatus.SUCCESS.value
            values.update(status=status, result=_json_result(result.data), error=None, finished_at=now)
            event = self._event(task.id, TaskEventKind.SUCCEEDED, from_status="PROCESSING",
                                to_status=status, attempt=task.attempt, worker_id=worker_id)
        elif result.is_cancelled:
            status = TaskStatus.CANCELLED.value
            message = _clip(result.message or "cancelled")
            values.update(status=status, error=message, finished_at=now)
            event = self._event(task.id, TaskEventKind.CANCELLED, from_status="PROCESSING",
                                to_status=status, attempt=task.attempt, worker_id=worker_id,
                                message=message)
        else:
            message = _clip(result.message or "failed without a message")
            if result.retryable and task.retry_count < task.max_retry_count:
                status = TaskStatus.RETRYING.value
                retry_delay = next_retry_delay(task.retry_count + 1, task.retry_strategy,
                                               task.retry_interval, task.retry_max_delay, task.retry_jitter)
                values.update(status=status, retry_count=AsyncTask.retry_count + 1, error=message,
                              next_run_at=self._now_plus(retry_delay), worker_id=None)
                event = self._event(task.id, TaskEventKind.RETRY_SCHEDULED, from_status="PROCESSING",
                                    to_status=status, attempt=task.attempt, worker_id=worker_id,
                                    message=f"{message} (retry {task.retry_count + 1} of "
                                            f"{task.max_retry_count} in {retry_delay:g}s)",
                                    traceback=traceback)
            else:
                status = TaskStatus.FAILURE.value
                why = "" if result.retryable else " (not retryable)"
                values.update(status=status, error=message, finished_at=now,
                              result=_json_result(result.data))
                event = self._event(task.id, TaskEventKind.FAILED, from_status="PROCESSING",
                                    to_status=status, attempt=task.attempt, worker_id=worker_id,
                                    message=message + why, traceback=traceback)
        values.update(claim_token=None)
        # A failed attempt of a task whose cancel was requested is not retried: it ends CANCELLED.
        retry_unless_cancelled = ([AsyncTask.cancel_requested_at.is_(None)]
                                  if status == TaskStatus.RETRYING.value else [])
        changed = self._fenced_update(task, values, *retry_unless_cancelled)
        if changed is None and retry_unless_cancelled:
            status, retry_delay = TaskStatus.CANCELLED.value, None
            message = _clip(f"cancelled: the attempt failed after a cancel was requested ({message})")
            changed = self._fenced_update(task, {"status": status, "error": message, "finished_at": now,
                                                 "updated_at": now, "claim_token": None})
            event = self._event(task.id, TaskEventKind.CANCELLED, from_status="PROCESSING", to_status=status,
                                attempt=task.attempt, worker_id=worker_id, message=message,
                                traceback=traceback)
        if changed is None:
            return None
        events = [event]
        if changed.cancel_requested_at is not None and status != TaskStatus.CANCELLED.value:
            events.append(self._cancel_too_late(task, status, worker_id))
        self._write_events(events)
        if status in (TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value):
            self._queue_notifications_if_wanted(task, status, result)
        return FinishOutcome(status, retry_delay)

    def _fenced_update(self, task: TaskInfo, values: dict[str, Any], *conditions: Any) -> Any:
        """UPDATE the task only while this attempt still holds its lease; the row or None."""
        return self.session.execute(
            update(AsyncTask)
            .where(AsyncTask.id == task.id, AsyncTask.claim_token == task.claim_token,
                   AsyncTask.status == TaskStatus.PROCESSING.value, *conditions)
            .values(**values)
            .returning(AsyncTask.cancel_requested_at)
            .execution_options(synchronize_session=False)
        ).first()

    def _cancel_too_late(self, task: TaskInfo, status: str, worker_id: str | None) -> dict[str, Any]:
        return self._event(task.id, TaskEventKind.CANCEL_TOO_LATE, attempt=task.attempt, worker_id=worker_id,
                           message=f"the cancel request was not honoured; the attempt ended {status}")

    def _queue_notifications_if_wanted(self, task: TaskInfo, status: str, result: TaskResult) -> None:
        """Write outbox rows when a notification can be due; skips the lookup when none can be.

        With the default ``build_notification_request`` a mail needs an email-address creator
        and a webhook needs a ``notify_url``; a task with neither costs no query at all.
        """
        if self._notification_may_be_needed(task):
            from .notify import queue_notifications

            queue_notifications(self, task, status, result)

    def _notification_may_be_needed(self, task: TaskInfo) -> bool:
        processor = self.registry.get(task.task_type)
        if processor is None:
            return False
        custom_builder = (type(processor).build_notification_request
                          is not TaskProcessor.build_notification_request)
        from .notify import is_email_address

        return custom_builder or bool(task.notify_url) or is_email_address(task.created_by)

    def _record_late_result(self, task: TaskInfo, result: TaskResult, worker_id: str | None) -> None:
        outcome = "success" if result.success else f"failure: {result.message}"
        log.warning("task %s: late result refused (lease of attempt %s lost): %s", task.id, task.attempt,
                    outcome)
        try:
            self._begin_write()
            if self.session.get(AsyncTask, task.id) is not None:
                self._write_events([self._event(
                    task.id, TaskEventKind.LATE_RESULT_REFUSED, attempt=task.attempt, worker_id=worker_id,
                    message=_clip(f"result of attempt {task.attempt} arrived after its lease was lost; "
                                  f"discarded ({outcome})"))])
            self.session.commit()
        except Exception:
            self.session.rollback()
            log.exception("task %s: could not record the refused late result", task.id)

    def release_tasks(self, tasks: Iterable[TaskInfo], worker_id: str | None = None,
                      reason: str = "worker stopped before the task finished") -> list[int]:
        """PROCESSING -> PENDING for leases this worker still holds (graceful shutdown)."""
        released: list[int] = []
        for task in tasks:
            self._begin_write()
            changed = self.session.execute(
                update(AsyncTask)
                .where(AsyncTask.id == task.id, AsyncTask.claim_token == task.claim_token,
                       AsyncTask.status == TaskStatus.PROCESSING.value)
                .values(status=TaskStatus.PENDING.value, claim_token=None, worker_id=None,
                        next_run_at=self._now(), updated_at=self._now(), started_at=None)
                .returning(AsyncTask.id)
                .execution_options(synchronize_session=False)
            ).first()
            if changed is not None:
                released.append(task.id)
                self._write_events([self._event(task.id, TaskEventKind.RELEASED, from_status="PROCESSING",
                                                to_status="PENDING", attempt=task.attempt,
                                                worker_id=worker_id, message=reason)])
            if changed is not None:
                self._commit_new_work()
            else:
                self.session.commit()
        return released

    def attempts_held_by(self, worker_id: str, older_than: float) -> list[TaskInfo]:
        """PROCESSING attempts leased to ``worker_id`` that started more than ``older_than`` s ago."""
        rows = self.session.execute(
            select(AsyncTask.id, AsyncTask.task_type, AsyncTask.claim_token, AsyncTask.attempts,
                   AsyncTask.priority, AsyncTask.retry_count, AsyncTask.max_retry_count)
            .where(AsyncTask.status == TaskStatus.PROCESSING.value, AsyncTask.worker_id == worker_id,
                   AsyncTask.started_at < self._now_plus(-older_than))
        ).all()
        self.session.rollback()
        return [TaskInfo(id=r.id, task_type=r.task_type, payload={}, priority=r.priority,
                         retry_count=r.retry_count, max_retry_count=r.max_retry_count, created_by=None,
                         created_at=None, attempt=r.attempts, claim_token=r.claim_token or "")
                for r in rows]

    def still_owns(self, task: TaskInfo) -> bool:
        """Whether the task's lease is still this attempt's (used before slow side effects)."""
        return self.session.execute(
            select(exists().where(AsyncTask.id == task.id, AsyncTask.claim_token == task.claim_token,
                                  AsyncTask.status == TaskStatus.PROCESSING.value))
        ).scalar_one()

    # -- workers and recovery ----------------------------------------------------------------

    def register_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int,
                        heartbeat_interval: float) -> None:
        self._begin_write()
        self.session.add(Worker(id=worker_id, hostname=hostname, pid=pid, concurrency=concurrency,
                                heartbeat_interval=heartbeat_interval, busy=0, status="RUNNING",
                                started_at=utcnow(), last_heartbeat_at=utcnow()))
        self.session.commit()
        self.session.execute(update(Worker).where(Worker.id == worker_id)
                             .values(started_at=self._now(), last_heartbeat_at=self._now()))
        self.session.commit()

    def heartbeat(self, worker_id: str, busy: int, processed: int = 0, failed: int = 0) -> bool:
        """Stamp the worker alive; False if it had been declared dead (its tasks were recovered)."""
        self._begin_write()
        changed = self.session.execute(
            update(Worker).where(Worker.id == worker_id, Worker.status == "RUNNING")
            .values(last_heartbeat_at=self._now(), busy=busy, processed=processed, failed=failed)
            .returning(Worker.id).execution_options(synchronize_session=False)
        ).first()
        self.session.commit()
        return changed is not None

    def revive_worker(self, worker_id: str, hostname: str, pid: int, concurrency: int,
                      heartbeat_interval: float) -> None:
        """A worker declared dead came back (it was paused): mark it running again."""
        self._begin_write()
        changed = self.session.execute(
            update(Worker).where(Worker.id == worker_id)
            .values(status="RUNNING", last_heartbeat_at=self._now(), stopped_at=None)
            .returning(Worker.id).execution_options(synchronize_session=False)
        ).first()
        self.session.commit()
        if changed is None:
            self.register_worker(worker_id, hostname, pid, concurrency, heartbeat_interval)

    def stop_worker(self, worker_id: str) -> None:
        self._begin_write()
        self.session.execute(update(Worker).where(Worker.id == worker_id)
                             .values(status="STOPPED", stopped_at=self._now(), busy=0)
                             .execution_options(synchronize_session=False))
        self.session.commit()

    def recover_orphans(self, max_processing_time: float, heartbeat_interval: float,
                        before_commit: Callable[[list[int]], None] | None = None) -> list[int]:
        """Send PROCESSING tasks whose worker is dead, or that ran too long, back to PENDING.

        A worker is dead when it missed three heartbeats (or stopped without releasing). A task
        recovered more than ``max_retry_count + 1`` times ends in FAILURE instead, so a task that
        kills its worker every time (a poison pill) cannot loop forever. Returns recovered ids.
        """
        stale_before = self._now_plus(-3 * heartbeat_interval)
        started_before = self._now_plus(-max_processing_time)
        self.session.rollback()
        self._begin_write()
        stale_workers = select(Worker.id).where(Worker.status == "RUNNING", Worker.last_heartbeat_at < stale_before)
        if self.is_postgres:
            # A worker frozen mid-transaction (SIGSTOP, a paused VM) keeps its rows locked; waiting
            # on them would stall every recovery in the cluster. Skip them: its tasks are still
            # found below (reads do not wait), and its row is marked at a later sweep.
            stale_workers = stale_workers.with_for_update(skip_locked=True)
        dead = self.session.execute(
            update(Worker).where(Worker.id.in_(stale_workers.scalar_subquery()))
            .values(status="DEAD", busy=0).returning(Worker.id).execution_options(synchronize_session=False)
        ).scalars().all()
        live_worker = exists().where(Worker.id == AsyncTask.worker_id, Worker.status == "RUNNING",
                                     Worker.last_heartbeat_at >= stale_before)
        orphaned = and_(AsyncTask.status == TaskStatus.PROCESSING.value,
                        or_(~live_worker, AsyncTask.started_at < started_before))
        orphans = (
            select(AsyncTask.id, AsyncTask.claim_token, AsyncTask.worker_id, AsyncTask.attempts,
                   AsyncTask.recovery_count, AsyncTask.max_retry_count, AsyncTask.started_at,
                   AsyncTask.task_type, AsyncTask.created_by, AsyncTask.retry_count, AsyncTask.payload,
                   AsyncTask.priority, AsyncTask.created_at, AsyncTask.notify_url)
            .where(orphaned)
        )
        if self.is_postgres:  # a row locked by a frozen (or finishing) worker: skip, not wait
            orphans = orphans.with_for_update(skip_locked=True, of=AsyncTask)
        candidates = self.session.execute(orphans).all()
        recovered: list[int] = []
        events = []
        limit_time = self.db_now() - timedelta(seconds=max_processing_time)
        for c in candidates:
            overdue = c.started_at is not None and c.started_at < limit_time
            why = (f"ran longer than max-processing-time ({max_processing_time:g}s)" if overdue
                   else f"worker {c.worker_id} stopped heartbeating")
            give_up = c.recovery_count + 1 > c.max_retry_count + 1
            values: dict[str, Any] = {"claim_token": None, "worker_id": None, "updated_at": self._now(),
                                      "recovery_count": AsyncTask.recovery_count + 1}
            if give_up:
                message = (f"recovered {c.recovery_count} times already (limit max_retry_count + 1 = "
                           f"{c.max_retry_count + 1}); last: {why}; giving up")
                values.update(status=TaskStatus.FAILURE.value, finished_at=self._now(), error=message)
                event = self._event(c.id, TaskEventKind.FAILED, from_status="PROCESSING", to_status="FAILURE",
                                    attempt=c.attempts, worker_id=c.worker_id, message=message)
            else:
                values.update(status=TaskStatus.PENDING.value, next_run_at=self._now(), started_at=None)
                event = self._event(c.id, TaskEventKind.RECOVERED, from_status="PROCESSING", to_status="PENDING",
                                    attempt=c.attempts, worker_id=c.worker_id, message=why)
            changed = self.session.execute(
                update(AsyncTask).where(AsyncTask.id == c.id, AsyncTask.claim_token == c.claim_token,
                                        AsyncTask.status == TaskStatus.PROCESSING.value)
                .values(**values).returning(AsyncTask.id).execution_options(synchronize_session=False)
            ).first()
            if changed is not None:
                recovered.append(c.id)
                events.append(event)
                if give_up:
                    failed_info = TaskInfo(id=c.id, task_type=c.task_type, payload=c.payload,
                                           priority=c.priority, retry_count=c.retry_count,
                                           max_retry_count=c.max_retry_count, created_by=c.created_by,
                                           created_at=c.created_at, attempt=c.attempts, claim_token="",
                                           notify_url=c.notify_url)
                    self._queue_notifications_if_wanted(
                        failed_info, TaskStatus.FAILURE.value,
                        TaskResult.failure(values["error"], retryable=False))
        self._write_events(events)
        if recovered and before_commit is not None:
            # e.g. drop the dead attempts' Redis locks before anyone can claim the tasks again
            before_commit(recovered)
        if recovered:
            self._commit_new_work()
        else:
            self.session.commit()
        if dead:
            log.warning("workers declared dead (missed heartbeats): %s", ", ".join(dead))
        if recovered:
            log.warning("recovered %d orphaned task(s): %s", len(recovered), recovered)
        return recovered

    def purge_finished(self, finished_before: datetime | str, statuses: Sequence[str] = TERMINAL_STATUSES,
                       batch_size: int = 1000, actor: str | None = None) -> int:
        """Delete finished tasks (and their events and notifications) older than a time, in batches.

        Small batches keep each transaction short, so workers and the console never wait long
        behind a purge. Only SUCCESS, FAILURE and CANCELLED tasks can be purged. Returns the count.
        """
        finished_before = parse_time(finished_before, "finished_before")
        chosen = [validate_status(status) for status in statuses]
        not_terminal = [status for status in chosen if status not in TERMINAL_STATUSES]
        if not_terminal or not chosen:
            raise ValidationError(f"only finished tasks can be purged (SUCCESS, FAILURE, CANCELLED), "
                                  f"not {', '.join(not_terminal) or 'nothing'}", field="status")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100_000:
            raise ValidationError("batch_size must be an integer from 1 to 100000", field="batch_size")
        total = 0
        while True:
            self.session.rollback()
            self._begin_write()
            ids = list(self.session.scalars(
                select(AsyncTask.id)
                .where(AsyncTask.status.in_(chosen), AsyncTask.finished_at < finished_before)
                .order_by(AsyncTask.id).limit(batch_size)))
            if not ids:
                self.session.rollback()
                break
            # Children first: SQLite only cascades with foreign keys on, and explicit is clearer.
            self.session.execute(delete(TaskEvent).where(TaskEvent.task_id.in_(ids)))
            self.session.execute(delete(Notification).where(Notification.task_id.in_(ids)))
            self.session.execute(update(AsyncTask).where(AsyncTask.parent_id.in_(ids)).values(parent_id=None)
                                 .execution_options(synchronize_session=False))
            self.session.execute(delete(AsyncTask).where(AsyncTask.id.in_(ids), AsyncTask.status.in_(chosen))
                                 .execution_options(synchronize_session=False))
            self.session.commit()
            total += len(ids)
        if actor is not None:
            self.audit(actor, "task.purge", "task", None,
                       detail={"finished_before": finished_before.isoformat(), "statuses": chosen,
                               "deleted": total})
            self.session.commit()
        return total

    def task_type_overview(self) -> list[dict[str, Any]]:
        """Every registered task type with its retry policy, pause state and counts per status.

        Counts are exact up to ``stats.EXACT_COUNT_LIMIT`` and estimated beyond (PostgreSQL), so
        the call stays fast on a table of millions; ``counts_are_estimates`` says which it is.
        """
        from .stats import type_status_counts_at_scale

        counts = type_status_counts_at_scale(session=self.session)
        paused = set(self.paused_task_types())
        overview = []
        for processor in self.registry:
            task_type = processor.get_task_type()
            config = processor.get_retry_config()
            type_counts = counts.get(task_type)
            per_status = {status.value: type_counts.get(status.value, 0) if type_counts else 0
                          for status in TaskStatus}
            overview.append({
                "task_type": task_type,
                "paused": task_type in paused or ALL_TYPES in paused,
                "retry": {"max_retry_count": config.max_retry_count, "strategy": config.strategy.value,
                          "base_interval": config.base_interval, "max_delay": config.max_delay,
                          "jitter": config.jitter},
                "counts": per_status,
                "counts_are_estimates": bool(type_counts is not None and type_counts.estimated),
            })
        return overview

    def workers(self, include_stopped: bool = False) -> list[Worker]:
        query = select(Worker).order_by(Worker.started_at.desc())
        if not include_stopped:
            query = query.where(Worker.status == "RUNNING")
        return list(self.session.scalars(query))

    def prune_workers(self, older_than: timedelta) -> int:
        """Forget stopped or dead workers whose last heartbeat is older than ``older_than``."""
        result = self.session.execute(
            delete(Worker).where(Worker.status != "RUNNING",
                                 Worker.last_heartbeat_at < utcnow() - older_than))
        self.session.commit()
        return int(getattr(result, "rowcount", 0) or 0)


# -- validation helpers shared by every front end -------------------------------------------


_ONE_STATEMENT_SUBMIT_SQL: dict[tuple[str, ...], tuple[str, frozenset[str]]] = {}


def _one_statement_submit_sql(columns: tuple[str, ...]) -> tuple[str, frozenset[str]]:
    """The task + SUBMITTED event + ``pg_notify`` statement for these columns (psycopg placeholders)."""
    cached = _ONE_STATEMENT_SUBMIT_SQL.get(columns)
    if cached is None:
        table = AsyncTask.__table__
        json_columns = frozenset(name for name in columns if table.c[name].type._type_affinity is JSON)
        values = ", ".join(f"CAST(%({name})s AS jsonb)" if name in json_columns else f"%({name})s"
                           for name in columns)
        sql = (
            f"WITH new_task AS (INSERT INTO async_task ({', '.join(columns)}) VALUES ({values})"
            " RETURNING id, status, created_at, created_by),"
            " new_task_event AS (INSERT INTO task_event (task_id, at, kind, to_status, actor)"
            " SELECT id, created_at, %(event_kind)s, status, created_by FROM new_task)"
            f" SELECT id, pg_notify('{WAKE_CHANNEL}', '') FROM new_task"
        )
        cached = _ONE_STATEMENT_SUBMIT_SQL[columns] = (sql, json_columns)
    return cached


def validate_task_id(value: Any, field: str = "id") -> int:
    """A task id: a positive integer (strings of digits accepted from URLs and the CLI)."""
    if isinstance(value, bool):
        raise ValidationError(f"{field} must be a positive integer", field=field)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or not 1 <= value <= 2**63 - 1:
        raise ValidationError(f"{field} must be a positive integer, got {value!r}", field=field)
    return value


def validate_status(value: Any) -> str:
    try:
        return TaskStatus(value).value
    except ValueError:
        allowed = ", ".join(s.value for s in TaskStatus)
        raise ValidationError(f"unknown status {value!r}; expected one of {allowed}", field="status") from None


def parse_time(value: Any, field: str) -> datetime:
    """An aware datetime, or an ISO-8601 string with a time zone ('Z' allowed)."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ValidationError(f"{field} must be an ISO-8601 time, got {value!r}", field=field) from None
    if not isinstance(value, datetime):
        raise ValidationError(f"{field} must be a time (an aware datetime or ISO-8601 string)", field=field)
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValidationError(f"{field} must include a time zone (e.g. 2026-01-01T12:00:00Z)", field=field)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is past datetime.max in UTC
        raise ValidationError(f"{field} is out of the supported range (years 1 to 9999 in UTC)",
                              field=field) from None


def _unstorable_text(value: Any) -> str | None:
    """Why a JSON value holds text no database here can store (NUL, lone surrogates), or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "must not contain NUL (\\u0000) characters"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "contains invalid Unicode (a lone surrogate)"
    return None


def _attempt_key(task: TaskInfo) -> tuple[int, str]:
    """One attempt of a task: its id and the claim token of that attempt."""
    return task.id, task.claim_token


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[:MAX_ERROR_LENGTH] + "… (truncated)"


def _json_result(data: Any) -> Any:
    """A processor's result data as stored JSON; anything not JSON-serialisable is named, not lost."""
    if data is None:
        return None
    try:
        return json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError):
        return {"unserialisable_result": repr(data)[:2000]}


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
