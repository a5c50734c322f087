"""Where a claim pool hears that new work may be due, so it claims at once instead of at the poll.

Three sources, each calling a ``wake()`` callback (cheap, safe from any thread):

* **in-process**: ``LocalWakers`` holds the pools of one kind running in this process; a commit
  that makes work due wakes them (``wake_after_commit`` waits for the session's commit, so a
  rolled-back transaction wakes nobody);
* **PostgreSQL** ``LISTEN``: ``PostgresListener`` keeps a session of its own listening on a
  channel that submits ``NOTIFY`` (one signal per commit, however many rows);
* **SQLite** ``PRAGMA data_version``: ``SQLiteWatcher`` notices commits by other connections.

Polling stays the safety net: a wake-up is an optimisation, never the only way work is found.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

Wake = Callable[[], None]

EXTENSION_KEY = "taskdeck_local_wakers"
# How often the SQLite watcher reads data_version: a local call of a few microseconds, so other
# processes' commits are noticed about as fast as PostgreSQL's NOTIFY delivers them.
SQLITE_WATCH_INTERVAL = 0.02
LISTEN_RECONNECT_DELAY = 1.0


class LocalWakers:
    """The wake-up callbacks of one kind of pool running in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wakers: list[Wake] = []

    def add(self, wake: Wake) -> None:
        """Register a pool's ``wake``."""
        with self._lock:
            self._wakers.append(wake)

    def discard(self, wake: Wake) -> None:
        """Forget a pool's ``wake`` (it stopped)."""
        with self._lock:
            if wake in self._wakers:
                self._wakers.remove(wake)

    def wake_all(self) -> None:
        """Wake every registered pool."""
        with self._lock:
            wakers = list(self._wakers)
        for wake in wakers:
            wake()


def local_wakers(app: Flask, kind: str) -> LocalWakers:
    """The in-process wakers of ``kind`` (e.g. ``"notifications"``) for ``app``."""
    by_kind: dict[str, LocalWakers] = app.extensions.setdefault(EXTENSION_KEY, {})
    wakers = by_kind.get(kind)
    if wakers is None:
        wakers = by_kind.setdefault(kind, LocalWakers())
    return wakers


_SESSION_KEY = "taskdeck_wake_after_commit"
_hooks_lock = threading.Lock()
_hooks_installed = False


def wake_after_commit(session: Session, wakers: LocalWakers) -> None:
    """Wake ``wakers`` once ``session`` commits (nothing if it rolls back)."""
    _install_session_hooks()
    pending: list[LocalWakers] = session.info.setdefault(_SESSION_KEY, [])
    if wakers not in pending:
        pending.append(wakers)


def _install_session_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    with _hooks_lock:
        if not _hooks_installed:
            event.listen(Session, "after_commit", _after_commit)
            event.listen(Session, "after_rollback", _after_rollback)
            _hooks_installed = True


def _after_commit(session: Session) -> None:
    for wakers in session.info.pop(_SESSION_KEY, []):
        try:
            wakers.wake_all()
        except Exception:  # a wake-up is an optimisation; polling still finds the work
            log.exception("could not wake local pools after a commit")


def _after_rollback(session: Session) -> None:
    session.info.pop(_SESSION_KEY, None)


class PostgresListener:
    """``LISTEN channel`` on a session of its own; each ``NOTIFY`` calls ``wake``.

    Behind PgBouncer in transaction mode LISTEN needs a direct URL (docs/deploy.md). A lost
    connection is reopened after a second, with one log line.
    """

    def __init__(self, url: URL, channel: str, wake: Wake, stopping: threading.Event) -> None:
        url = url.difference_update_query(["prepare_threshold"])  # a psycopg option, not a libpq key
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._channel = channel
        self._wake = wake
        self._stopping = stopping

    def start(self, name: str) -> threading.Thread:
        """Run the listener on a daemon thread called ``name``."""
        thread = threading.Thread(target=self._listen, name=name, daemon=True)
        thread.start()
        return thread

    def _listen(self) -> None:
        import psycopg  # PostgreSQL only: a SQLite process never pays for importing it

        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self._channel}")
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._wake()
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("wake-up listener lost its connection (%s); reconnecting", exc)
                    self._stopping.wait(LISTEN_RECONNECT_DELAY)


class SQLiteWatcher:
    """Calls ``wake`` when another connection commits to the SQLite file (``data_version``).

    An idle database costs nothing more: the claims themselves first check, read-only, that
    something is due before they take the write lock.
    """

    def __init__(self, path: str, wake: Wake, stopping: threading.Event) -> None:
        self._path = path
        self._wake = wake
        self._stopping = stopping

    def start(self, name: str) -> threading.Thread | None:
        """Run the watcher on a daemon thread called ``name``; None for an in-memory database."""
        if not self._path or self._path == ":memory:":
            return None
        thread = threading.Thread(target=self._watch, name=name, daemon=True)
        thread.start()
        return thread

    def _watch(self) -> None:
        try:
            connection = sqlite3.connect(self._path, timeout=1, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("cannot watch %s for new work (%s); polling only", self._path, exc)
            return
        last = None
        try:
            while not self._stopping.wait(SQLITE_WATCH_INTERVAL):
                try:
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    continue
                if last is not None and version != last:
                    self._wake()
                last = version
        finally:
            connection.close()
