"""The child's side of process isolation: build the app once, then run the attempts the worker sends.

A child (started by ``isolation.ChildPool``) answers each attempt with a plain tuple, so nothing
but built-in values crosses the pipe: ``(success, data, message, retryable, cancelled,
traceback, resident bytes)``. The processor's own ``db.session`` writes are committed here when
``process()`` succeeds and rolled back otherwise.
"""

from __future__ import annotations

import functools
import importlib
import os
import resource
import signal
import threading
import time
import traceback as tb_module
from multiprocessing.connection import Connection
from typing import Any

from flask import Flask

from ..extensions import db
from ..logging_setup import task_log_context
from .attempt import TaskInfo
from .errors import TaskCancelled
from .masking import declared_sensitive_fields, scrub_secrets, secret_values
from .processor import TaskProcessor, TaskResult
from .progress import TaskContext
from .progress import enter as enter_context
from .registry import payload_from_json

ORPHAN_CHECK_INTERVAL = 1.0  # seconds between a child's looks at whether its parent is alive

ProcessorRef = tuple[str, str]  # (module, qualified name) of the processor's class


def serve_child(conn: Connection, config: dict[str, Any], factory: str) -> None:
    """A child's life: build the app, then run the tasks the parent sends until it sends None."""
    # Ctrl-C reaches the whole process group: the worker decides when its children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), name="orphan-watch", daemon=True).start()
    module, _, name = factory.partition(":")
    app = getattr(importlib.import_module(module), name)(config)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the worker is gone
            break
        if request is None:
            break
        task, ref = request
        reply = run_in_child(app, task, ref)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            break
        except Exception as exc:  # a result that cannot be pickled
            conn.send((False, None, f"the result could not be sent back from the child process: {exc}",
                       False, False, None, resident_bytes()))
    with app.app_context():
        db.engine.dispose()


def _exit_when_orphaned(parent: int) -> None:
    """A worker killed outright (SIGKILL) cannot stop its children: a busy one would run on, so
    each child exits once its parent (the fork server, which ends with the worker) is gone."""
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_INTERVAL)
    os._exit(1)


def run_in_child(app: Flask, task: TaskInfo, ref: ProcessorRef) -> tuple[Any, ...]:
    """Run one attempt in this child: (success, data, message, retryable, cancelled, traceback, rss)."""
    with app.app_context():
        try:
            processor = app.extensions["async_task"].registry.get(task.task_type) or _load_processor(ref)
        except Exception as exc:
            return (False, None, f"the processor of {task.task_type!r} cannot be loaded in a child "
                    f"process: {type(exc).__name__}: {exc}", False, False, None, resident_bytes())
        secrets = secret_values(task.payload, declared_sensitive_fields(processor))
        scrub = functools.partial(scrub_secrets, secrets=secrets) if secrets else None
        context = TaskContext(app, task)
        enter_context(context)
        try:
            with task_log_context(task, scrub):  # the child's log lines name the task, as a thread's do
                outcome = _process(processor, task)
        finally:
            enter_context(None)
            context.flush()
            db.session.remove()
    return (*outcome, resident_bytes())


def _process(processor: TaskProcessor, task: TaskInfo) -> tuple[Any, ...]:
    try:
        payload: Any = task.payload
        if processor.payload_type is not None:
            payload = payload_from_json(processor.payload_type, task.payload)
        result = processor.process(task, payload)
        if result is None or isinstance(result, dict):
            result = TaskResult.success(result)
        if not isinstance(result, TaskResult):
            db.session.rollback()
            return (False, None, f"process() returned {type(result).__name__}, expected TaskResult",
                    False, False, None)
        if result.success:
            db.session.commit()  # the processor's writes: committed here, before the outcome
        else:
            db.session.rollback()
        return (result.success, result.data, result.message, result.retryable, result.is_cancelled, None)
    except TaskCancelled:
        db.session.rollback()
        return (False, None, None, False, True, None)
    except Exception as exc:
        db.session.rollback()
        return (False, None, f"{type(exc).__name__}: {exc}", True, False, tb_module.format_exc())


def _load_processor(ref: ProcessorRef) -> TaskProcessor:
    module, qualname = ref
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    processor = found()
    if not isinstance(processor, TaskProcessor):
        raise TypeError(f"{module}.{qualname} is not a TaskProcessor")
    return processor


def resident_bytes() -> int:
    """This process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024
