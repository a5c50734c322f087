"""Submitting tasks: one, many (all or nothing), idempotent repeats, and waking consumers.

Input is checked first (``validation``); nothing is written for a refused submit. On
PostgreSQL a lone submit outside the caller's transaction is one autocommit statement that
also writes its event and wakes consumers (``Dialect.submit_in_one_statement``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import make_transient_to_detached

from .errors import IdempotencyConflict, ValidationError
from .limits import Unique
from .models import AsyncTask
from .store import TaskStore
from .validation import checked_batch_item, task_row


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


class Submitter(TaskStore):
    """Queue new tasks."""

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
        principal: str | None = None,
        start_by: datetime | str | None = None,
        expires_in: float | None = None,
    ) -> SubmitOutcome:
        """Queue one task; with ``commit=False`` it joins the caller's transaction (no commit, no wake-up).

        ``principal`` (``token:<name>``, ``user:<name>``, ``cli``) is recorded on the task and as
        its SUBMITTED event's actor. ``start_by`` (an aware time) or ``expires_in`` (seconds): a
        task not started by then never starts and ends CANCELLED ("start deadline passed").
        """
        row = task_row(self.processor_for, self.db_now, task_type, payload, priority, created_by, run_at,
                       idempotency_key, idempotency_scope, notify_url, parent_id, principal,
                       start_by=start_by, expires_in=expires_in)
        unique = self.registry.limits_of(row["task_type"]).unique
        if commit and unique is None and self._may_submit_in_one_statement():
            return self._submit_in_one_statement(row)
        # Before the idempotency lookup: on SQLite a read that is later upgraded to a write fails
        # with "database is locked" when another writer committed in between.
        self.begin_write()
        if idempotency_key is not None:
            existing = self._find_idempotent(idempotency_scope, idempotency_key)
            if existing is not None:
                return self._repeat_of(existing, row)
        if unique is not None:
            found = self._find_unique(row, unique)
            if found is not None:
                if commit:  # end the transaction (and its lock) at once, keeping the loaded task
                    self.session.expunge(found)
                    self.session.commit()
                return SubmitOutcome(found, False)
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
            return self._repeat_of(existing, row)
        self.write_events([self.transition_event("submit", task.id, actor=principal)])
        if commit:
            # Every column was set here, so the detached object is complete: answering the caller
            # needs no reload after the commit.
            self.session.expunge(task)
            self.commit_new_work()
        return SubmitOutcome(task, True)

    def submit_many(self, items: Iterable[dict[str, Any]], *, idempotency_scope: str | None = None,
                    commit: bool = True, principal: str | None = None) -> list[TaskSnapshot]:
        """Queue many tasks in one transaction; if any item is invalid, none is written.

        Each item is a mapping with the ``submit_task`` arguments (``task_type``, ``payload``,
        ``priority``, ``created_by``, ``run_at``, ``notify_url``, ``idempotency_key``). Errors name
        the item index. Every task records ``principal``. An item whose key names a task already
        (in ``idempotency_scope``, or earlier in the batch) is that task, so a batch retried after
        a timeout creates nothing twice; the key with another type or payload is refused whole.
        """
        rows = []
        for index, item in enumerate(items):
            checked_batch_item(index, item)
            try:
                rows.append(task_row(
                    self.processor_for, self.db_now, item.get("task_type"), item.get("payload"),
                    item.get("priority"), item.get("created_by"), item.get("run_at"),
                    item.get("idempotency_key"), idempotency_scope, item.get("notify_url"), None, principal,
                    start_by=item.get("start_by"), expires_in=item.get("expires_in")))
            except ValidationError as exc:
                field = f"tasks[{index}].{exc.field}" if exc.field else f"tasks[{index}]"
                raise type(exc)(f"item {index}: {exc.message}", field=field) from None
        if not rows:
            return []
        keyed = any(row["idempotency_key"] is not None for row in rows)
        for second_try in (False, True):
            self.begin_write()
            try:
                tasks = self._insert_batch(rows, idempotency_scope) if keyed else self._insert_rows(rows)
                break
            except IntegrityError:
                # A concurrent batch took one of the keys first: look again (this time it is found).
                self.session.rollback()
                if second_try or not (keyed and commit):
                    raise
        if commit:
            self.commit_new_work()
        return tasks

    def _insert_rows(self, rows: list[dict[str, Any]]) -> list[TaskSnapshot]:
        """Insert new task rows; plain snapshots, since 1,000 tracked objects cost more than the insert."""
        ids = self.dialect.insert_tasks(self, rows) if rows else []
        return [TaskSnapshot(id=task_id, **row) for task_id, row in zip(ids, rows, strict=True)]

    def _insert_batch(self, rows: list[dict[str, Any]], scope: str | None) -> list[TaskSnapshot]:
        """Insert the rows whose idempotency key names no task yet; the others are the tasks they name."""
        keys = sorted({row["idempotency_key"] for row in rows if row["idempotency_key"] is not None})
        scope_clause = AsyncTask.idempotency_scope.is_(None) if scope is None else AsyncTask.idempotency_scope == scope
        found = {task.idempotency_key: task for task in self.session.scalars(
            select(AsyncTask).where(scope_clause, AsyncTask.idempotency_key.in_(keys)))}
        first_with_key: dict[str, int] = {}
        slots: list[TaskSnapshot | int] = []  # an existing task, or the position among new rows
        new_rows: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            key = row["idempotency_key"]
            try:
                if key in found:
                    task = found[key]
                    check_same_task(key, task.task_type, task.payload, row)
                    slots.append(snapshot_of(task))
                    continue
                if key is not None and key in first_with_key:
                    earlier = rows[first_with_key[key]]
                    check_same_task(key, earlier["task_type"], earlier["payload"], row)
                    slots.append(slots[first_with_key[key]])
                    continue
            except IdempotencyConflict as exc:
                raise IdempotencyConflict(f"item {index}: {exc.message}",
                                          field=f"tasks[{index}].idempotency_key") from None
            if key is not None:
                first_with_key[key] = index
            slots.append(len(new_rows))
            new_rows.append(row)
        created = self._insert_rows(new_rows)
        return [created[slot] if isinstance(slot, int) else slot for slot in slots]

    def _may_submit_in_one_statement(self) -> bool:
        """The database can, and no transaction or pending change of the caller's would be ended."""
        session = self.session
        return (self.dialect.submits_in_one_statement and not session.in_transaction()
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
        connection = session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
        try:
            if key is not None:
                existing = self._find_idempotent(scope, key)
                if existing is not None:
                    # Fully loaded by the lookup; detached so the autocommit connection goes
                    # back to the pool now and later work on the session is transactional again.
                    session.expunge(existing)
                    session.commit()
                    return self._repeat_of(existing, row)
            task_id = self.dialect.submit_in_one_statement(connection, row)
        except IntegrityError:
            session.rollback()
            if key is None:
                raise
            # Two submits with one idempotency key raced; the other one won.
            existing = self._find_idempotent(scope, key)
            if existing is None:
                raise
            return self._repeat_of(existing, row)
        except BaseException:
            session.rollback()
            raise
        session.commit()  # committed already (autocommit); this hands the connection back
        # Every column was set from ``row``: a detached instance is as complete as a reloaded one.
        task = AsyncTask(**row)
        task.id = task_id
        make_transient_to_detached(task)
        self.announce_new_work()
        return SubmitOutcome(task, True)

    def _find_idempotent(self, scope: str | None, key: str | None) -> AsyncTask | None:
        scope_clause = AsyncTask.idempotency_scope.is_(None) if scope is None else AsyncTask.idempotency_scope == scope
        return self.session.scalars(
            select(AsyncTask).where(scope_clause, AsyncTask.idempotency_key == key)
        ).first()

    def _repeat_of(self, existing: AsyncTask, row: dict[str, Any]) -> SubmitOutcome:
        """The task an idempotency key already names, if this submit asks for the same task."""
        check_same_task(existing.idempotency_key, existing.task_type, existing.payload, row)
        return SubmitOutcome(existing, False)

    def _find_unique(self, row: dict[str, Any], unique: Unique) -> AsyncTask | None:
        """A task of the type whose ``unique.fields`` match, in ``unique.statuses``, created in the window.

        Concurrent identical submits first queue up on the key's lock (PostgreSQL: an advisory
        lock until commit; SQLite: the write lock the submit holds), so one creates, the rest find it.
        """
        values = [(name, row["payload"].get(name)) for name in unique.fields]
        key = json.dumps([row["task_type"], values], sort_keys=True, default=str)
        self.dialect.lock_unique(self.session, key)
        since = row["created_at"] - timedelta(seconds=unique.window_seconds)
        return self.session.scalars(
            select(AsyncTask)
            .where(AsyncTask.task_type == row["task_type"], AsyncTask.status.in_(unique.statuses),
                   AsyncTask.created_at >= since,
                   *(self.dialect.payload_field_equals(name, value) for name, value in values))
            .order_by(AsyncTask.id).limit(1)
        ).first()


def snapshot_of(task: AsyncTask) -> TaskSnapshot:
    """A loaded task as a ``TaskSnapshot`` (what ``submit_many`` returns)."""
    return TaskSnapshot(**{attr.key: getattr(task, attr.key) for attr in AsyncTask.__mapper__.column_attrs})


def check_same_task(key: str | None, task_type: str, payload: Any, row: dict[str, Any]) -> None:
    """``IdempotencyConflict`` naming the key when ``row`` asks for another type or payload than the task."""
    if task_type != row["task_type"] or payload != row["payload"]:
        what = "task type" if task_type != row["task_type"] else "payload"
        raise IdempotencyConflict(
            f"idempotency_key {key!r} was already used for a task with a different {what}",
            field="idempotency_key")
