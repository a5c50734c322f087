"""Binds the engine to a Flask app: processor registry, Redis locks, in-process consumers."""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from datetime import timedelta

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine

from ..config import engine_settings
from ..extensions import db
from .consumer import Consumer
from .locks import TaskLocks
from .registry import ProcessorRegistry

log = logging.getLogger(__name__)


class TaskEngine:
    """Per-app engine state, kept in ``app.extensions['async_task']``."""

    def __init__(self, registry: ProcessorRegistry, locks: TaskLocks | None) -> None:
        self.registry = registry
        self.locks = locks
        self.local_consumers: list[Consumer] = []
        self.redis_ok: bool | None = None if locks is None else True
        self.paused_cache: tuple[float, set[str]] | None = None
        self.clock_offset: tuple[float, timedelta] | None = None  # (measured at, database - local)

    def announce_new_work(self) -> None:
        """Wake this process's consumers (other processes hear the database's NOTIFY)."""
        for consumer in list(self.local_consumers):
            consumer.wake()


def init_engine(app: Flask, registry: ProcessorRegistry | None = None) -> TaskEngine:
    """Load processors and set up locks; a duplicate task type or a bad module fails here."""
    if registry is None:
        registry = ProcessorRegistry()
        registry.load_modules(app.config["ASYNC_TASK_PROCESSORS"])
        registry.load_entry_points()
    settings = engine_settings(app)  # built here, once, for every part of the engine
    locks = (TaskLocks(settings.redis_url, settings.redis_lock_prefix, ttl_seconds=settings.redis_lock_ttl)
             if settings.redis_url else None)
    engine = TaskEngine(registry, locks)
    app.extensions["async_task"] = engine
    with app.app_context():
        _tune_sqlite(db.engine)
    return engine


def _tune_sqlite(engine: Engine) -> None:
    """SQLite: WAL (readers never block the writer), a busy timeout, explicit transactions.

    pysqlite's own transaction handling is switched off so that SQLAlchemy emits BEGIN itself,
    which lets writers ask for BEGIN IMMEDIATE (see ``SessionWriter.begin_write``).
    """
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):  # type: ignore[no-untyped-def]
        mode = connection.get_execution_options().get("sqlite_begin")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def start_embedded_consumer(app: Flask) -> Consumer | None:
    """Start a consumer inside this (web) process when ASYNC_TASK_CONSUMER_ENABLED says so."""
    if not app.config["ASYNC_TASK_CONSUMER_ENABLED"]:
        return None
    consumer = Consumer(app).start()
    atexit.register(consumer.stop, 5.0)
    _exit_cleanly_on_sigterm()
    return consumer


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM's default kills the process without running ``atexit``, so a stopped ``flask run``
    (``make run``) left its worker row to be declared DEAD later. Where nobody handles SIGTERM
    (gunicorn and ``flask tasks worker`` install their own), it becomes a normal exit instead."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
