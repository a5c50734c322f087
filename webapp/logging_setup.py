"""Logging: plain text or one JSON object a line, each record carrying the running task.

The consumer wraps every attempt in ``task_log_context(task)``; while it runs, every record
emitted on that worker thread (by the engine, the processor, SQLAlchemy, anything) gets the
attributes ``task_id``, ``task_type`` and ``attempt``. They are added by a log-record factory,
not by a handler filter, so they reach every handler, including ones an embedding application
or gunicorn installed, and any format string may use ``%(task_id)s``.

The context lives in a ``ContextVar``: each worker thread has its own, so two tasks running
side by side never see each other's ids.

``ASYNC_TASK_LOG_FORMAT=json`` switches the handler this module installs to JSON lines
(``ts``, ``level``, ``logger``, ``message``, ``process``, ``thread``, the task fields when a task
runs, ``exc_info`` with the traceback); ``text`` (the default) keeps a one-line human format.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
TASK_FIELDS = ("task_id", "task_type", "attempt")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s%(task_suffix)s"
# Marks the one root handler this module owns, so configuring again replaces it, never stacks.
HANDLER_NAME = "taskdeck"


@dataclass(frozen=True)
class TaskLogContext:
    """The attempt a worker thread is running: what every log line of that thread names."""

    task_id: int
    task_type: str
    attempt: int
    # Hides the task's sensitive payload values in every line (and traceback) of the attempt.
    scrub: Callable[[str], str] | None = None


current_task: ContextVar[TaskLogContext | None] = ContextVar("taskdeck_current_task", default=None)


@contextmanager
def task_log_context(task: Any, scrub: Callable[[str], str] | None = None) -> Iterator[TaskLogContext]:
    """Tag every log record of this thread with ``task``'s id, type and attempt while it runs."""
    context = TaskLogContext(int(task.id), str(task.task_type), int(task.attempt), scrub)
    token = current_task.set(context)
    try:
        yield context
    finally:
        current_task.reset(token)


# -- the record factory ---------------------------------------------------------------------

_installed_factory: Callable[..., logging.LogRecord] | None = None


def install_record_factory() -> None:
    """Wrap the logging module's record factory once, adding the task fields to every record."""
    global _installed_factory
    if _installed_factory is not None and logging.getLogRecordFactory() is _installed_factory:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        context = current_task.get()
        record.task_id = context.task_id if context else None
        record.task_type = context.task_type if context else None
        record.attempt = context.attempt if context else None
        record.task_suffix = (f" [task={context.task_id} type={context.task_type} "
                              f"attempt={context.attempt}]" if context else "")
        if context is not None and context.scrub is not None:
            _scrub_record(record, context.scrub)
        return record

    logging.setLogRecordFactory(factory)
    _installed_factory = factory


def _scrub_record(record: logging.LogRecord, scrub: Callable[[str], str]) -> None:
    """Replace the record's message (and its traceback's text) by their scrubbed versions."""
    record.msg, record.args = scrub(record.getMessage()), None
    if record.exc_info and not record.exc_text:
        record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))


# -- formatters -----------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """One line a record; `` [task=.. type=.. attempt=..]`` appended while a task runs."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "task_suffix"):  # made before the factory was installed
            record.task_suffix = ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a record; task fields present (not null) only while a task runs."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for name in TASK_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        # Fields passed with ``extra=`` that are plain values go along (request ids and the like).
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRIBUTES and name not in document and _is_plain(value):
                document[name] = value
        if record.exc_info:
            document["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            document["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False, default=str)


_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message", "asctime", "task_suffix", *TASK_FIELDS}


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``text`` or ``json``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


# -- configuration --------------------------------------------------------------------------


def configure_logging(log_format: str = "text", level: str | int | None = None) -> None:
    """Install the record factory and the root handler in the chosen format.

    The handler goes on the root logger only when nothing else has configured logging yet (the
    ``flask`` command, gunicorn, ``python -m``), or when it is ours from an earlier call, in
    which case its format is updated. An application that set up its own handlers keeps them;
    the task fields still reach them through the record factory.
    """
    install_record_factory()
    formatter = make_formatter(log_format)
    # APScheduler logs every job run at INFO; the engine logs what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if handler.get_name() == HANDLER_NAME]
    if not ours and root.handlers:
        return  # someone else configured logging (an embedding app, a test runner): theirs
    if not ours:
        stream_handler = logging.StreamHandler(sys.stderr)
        stream_handler.set_name(HANDLER_NAME)
        root.addHandler(stream_handler)
        ours = [stream_handler]
    for handler in ours:
        handler.setFormatter(formatter)
    level = level or os.environ.get("LOG_LEVEL") or "INFO"
    root.setLevel(level.upper() if isinstance(level, str) else level)


# -- the access log ---------------------------------------------------------------------------

# Query parameters whose values are credentials wherever they appear (a token pasted into a URL).
SECRET_PARAMETER_WORDS = ("token", "secret", "password", "passwd", "api_key", "apikey", "key", "auth")
REDACTED = "[redacted]"


def redact_query(path: str, query: str) -> str:
    """The query string as the access log may keep it: none at all for ``/api/`` paths (bearer
    tokens only belong in a header, but clients paste them into URLs), elsewhere every parameter
    whose name says credential (``token``, ``secret``, ``password``, ``key``, ...) redacted."""
    if not query:
        return ""
    if path == "/api" or path.startswith("/api/"):
        return REDACTED
    kept = []
    for pair in query.split("&"):
        name, equals, _value = pair.partition("=")
        lowered = name.lower()
        secret = any(word in lowered for word in SECRET_PARAMETER_WORDS) or "tdk_" in pair
        kept.append(f"{name}{equals}{REDACTED}" if secret and equals else pair)
    return "&".join(kept)


class AccessLogRedactionFilter(logging.Filter):
    """On ``gunicorn.access``: rewrite the request line and query atoms with ``redact_query``.

    Gunicorn logs each request with a dict of atoms as the record's ``args`` (``r`` the request
    line with the raw URI, ``U`` the path, ``q`` the query string); the filter edits that dict
    before any handler formats the line, so every format and handler gets the redacted values.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if not isinstance(atoms, dict) or not atoms.get("q"):
            return True
        path = str(atoms.get("U", ""))
        query = redact_query(path, str(atoms["q"]))
        atoms["q"] = query  # in place: gunicorn's SafeAtoms answers '-' for atoms it lacks
        request_line = str(atoms.get("r", ""))
        method, _, rest = request_line.partition(" ")
        uri, _, protocol = rest.rpartition(" ")
        if "?" in uri:
            atoms["r"] = f"{method} {uri.partition('?')[0]}?{query} {protocol}"
        return True


def gunicorn_logconfig(log_format: str = "text", level: str | None = None) -> dict[str, Any]:
    """A ``logconfig_dict`` for gunicorn: its error and access logs in the app's format.

    Gunicorn's own handlers are replaced by one root handler named like ours, so the app's
    ``configure_logging`` (run again in each worker) adopts it instead of adding a second one,
    and every line of the master, the workers, the access log and the tasks shares one format.
    """
    make_formatter(log_format)  # refuse a bad format before gunicorn starts
    formatter_class = JsonFormatter if log_format == "json" else TextFormatter
    level = (level or os.environ.get("LOG_LEVEL") or "INFO").upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": level, "handlers": [HANDLER_NAME]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True,
                                "filters": ["redact_queries"]},
        },
        # Query strings of /api/ requests never reach the log (issue 10 item 23).
        "filters": {"redact_queries": {"()": f"{__name__}.AccessLogRedactionFilter"}},
        "handlers": {
            HANDLER_NAME: {"class": "logging.StreamHandler", "formatter": HANDLER_NAME,
                           "stream": "ext://sys.stderr"},
        },
        "formatters": {
            HANDLER_NAME: {"()": f"{formatter_class.__module__}.{formatter_class.__qualname__}"},
        },
    }
