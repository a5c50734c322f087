"""Process isolation: attempts of ``isolation="process"`` task types run in child processes.

A worker thread hands the attempt to an idle child of its consumer's ``ChildPool`` and waits for
the answer on a pipe. Because the attempt runs in another process:

* the hard time limit can stop it: the child is killed (SIGKILL) and the attempt fails with the
  time-limit error, retried by the type's policy;
* a crash of the child (a segfault in a C extension, ``os._exit``, the out-of-memory killer)
  ends the pipe; the attempt fails and the worker carries on with a fresh child.

Children come from the ``forkserver`` start method (``spawn`` where there is none): forking a
threaded worker could copy a lock some other thread held. Each child builds the app once with
the worker's configuration (``create_app``), so the processor, ``db.session``,
``report_progress`` and ``is_cancel_requested`` work there as in a thread, and serves tasks
one at a time until it has run ``ASYNC_TASK_MAX_TASKS_PER_CHILD`` of them or its resident memory
passes ``ASYNC_TASK_MAX_MEMORY_PER_CHILD`` MiB (0: no limit); then it is replaced.

What differs from a thread: the processor's own ``db.session`` writes are committed by the
child when ``process()`` succeeds (rolled back otherwise), not in the transaction that records
the outcome; children are daemonic, so a processor cannot start processes of its own there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from flask import Flask

from .attempt import TaskInfo
from .child import ProcessorRef, serve_child
from .limits import time_limit_message
from .processor import TaskProcessor, TaskResult

log = logging.getLogger(__name__)

# Imported by name in the child: the engine cannot import the app factory (it imports the engine).
APP_FACTORY = "webapp:create_app"
START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
START_TIMEOUT = 60.0  # seconds for a new child to build its app and say it is ready
STOP_GRACE = 2.0  # seconds a retired child has to exit before it is killed
# Settings a child must not take from its worker: it runs no consumer and no scheduler.
CHILD_OVERRIDES = {"ASYNC_TASK_CONSUMER_ENABLED": False, "ASYNC_TASK_SCHEDULER_ENABLED": False,
                   "ASYNC_TASK_SCHEDULES": None}
PLAIN = (str, int, float, bool, type(None))

class ChildStartError(RuntimeError):
    """A child process could not be started or did not get ready."""


@dataclass(frozen=True)
class ChildRun:
    """What became of one attempt handed to a child."""

    result: TaskResult
    traceback: str | None = None
    timed_out: bool = False  # killed at the hard time limit


@dataclass
class Child:
    """One child process and the parent's end of its pipe."""

    process: BaseProcess
    conn: Connection
    pid: int
    tasks: int = 0


def _is_plain(value: Any) -> bool:
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_plain(item) for key, item in value.items())
    return False


def child_config(app: Flask) -> dict[str, Any]:
    """The worker's configuration as a child rebuilds its app from it (plain values only)."""
    config = {name: value for name, value in app.config.items() if name.isupper() and _is_plain(value)}
    config.update(CHILD_OVERRIDES)
    return config


def processor_ref(processor: TaskProcessor) -> ProcessorRef:
    """Where a child finds the processor's class when its registry does not hold the type."""
    cls = type(processor)
    return cls.__module__, cls.__qualname__


class ChildPool:
    """A consumer's child processes: idle ones are reused, crashed or worn-out ones replaced."""

    def __init__(self, config: dict[str, Any], *, max_idle: int, max_tasks_per_child: int = 0,
                 max_memory_per_child: int = 0) -> None:
        self._context = multiprocessing.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            # The fork server imports the package once; each child then only builds its app.
            self._context.set_forkserver_preload([APP_FACTORY.partition(":")[0]])
        self._config = config
        self.max_idle = max_idle
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child  # MiB; 0: no limit
        self._idle: list[Child] = []
        self._busy: set[int] = set()  # pids
        self._children: dict[int, Child] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- running an attempt -------------------------------------------------------------------

    def run(self, task: TaskInfo, ref: ProcessorRef, *, soft: float | None, hard: float | None,
            on_soft: Callable[[], None]) -> ChildRun:
        """Run one attempt in a child; ``on_soft`` is called once past ``soft`` seconds, the child
        is killed past ``hard`` seconds (both counted from when the child received the task)."""
        task = dataclasses.replace(task, parent_results=dict(task.parent_results),
                                   workflow_summary=(None if task.workflow_summary is None
                                                     else dict(task.workflow_summary)))
        try:
            child = self._send(task, ref)
        except ChildStartError as exc:
            return ChildRun(TaskResult.failure(f"could not start a child process: {exc}"))
        started = time.monotonic()
        soft_at = None if soft is None else started + soft
        hard_at = None if hard is None else started + hard
        while True:
            due = [at for at in (soft_at, hard_at) if at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            try:
                reply = child.conn.recv() if child.conn.poll(timeout) else None
            except (EOFError, OSError):  # the child died (or the worker closed it on shutdown)
                return self._died(child)
            if reply is not None:
                return self._answered(child, reply)
            now = time.monotonic()
            if hard_at is not None and hard is not None and now >= hard_at:
                log.warning("task %s (%s) attempt %s: %s; killing its child process %s", task.id,
                            task.task_type, task.attempt, time_limit_message(hard), child.pid)
                self._discard(child, kill=True)
                return ChildRun(TaskResult.failure(time_limit_message(hard)), timed_out=True)
            if soft_at is not None and now >= soft_at:
                soft_at = None
                on_soft()

    def _send(self, task: TaskInfo, ref: ProcessorRef) -> Child:
        """Hand the task to an idle child (a new one if none is idle or the idle one died)."""
        for _ in range(3):
            child = self._take()
            try:
                child.conn.send((task, ref))
                return child
            except (BrokenPipeError, EOFError, OSError) as exc:
                log.warning("child process %s was gone before it got a task (%s); starting another",
                            child.pid, exc)
                self._discard(child, kill=True)
        raise ChildStartError("three child processes in a row died before they got the task")

    def _answered(self, child: Child, reply: tuple[Any, ...]) -> ChildRun:
        success, data, message, retryable, cancelled, trace, rss = reply
        if cancelled:
            result = TaskResult.cancelled(message) if message else TaskResult.cancelled()
        elif success:
            result = TaskResult.success(data)
        else:
            result = TaskResult(False, data=data, message=message, retryable=retryable)
        child.tasks += 1
        worn = (self.max_tasks_per_child and child.tasks >= self.max_tasks_per_child) or (
            self.max_memory_per_child and rss > self.max_memory_per_child * 1024 * 1024)
        if worn:
            log.info("child process %s retires after %d task(s), %.0f MiB resident", child.pid, child.tasks,
                     rss / 1024 / 1024)
            self._discard(child, kill=False)
        else:
            self._give_back(child)
        return ChildRun(result, trace)

    def _died(self, child: Child) -> ChildRun:
        child.process.join(timeout=1.0)
        code = child.process.exitcode
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                how += " (the out-of-memory killer, or an operator)"
        else:
            how = f"exit code {code}" if code is not None else "its pipe closed"
        log.warning("child process %s died while running a task (%s)", child.pid, how)
        self._discard(child, kill=True)
        return ChildRun(TaskResult.failure(f"the child process running the task died ({how})"))

    # -- children -----------------------------------------------------------------------------

    def warm(self) -> None:
        """Start one child in the background, so the first isolated task does not wait for it."""
        threading.Thread(target=self._start_idle, name="task-child-starter", daemon=True).start()

    def _start_idle(self) -> None:
        try:
            child = self._start()
        except ChildStartError as exc:
            if not self._closed:
                log.error("could not start a child process for isolated tasks: %s", exc)
            return
        self._give_back(child)

    def _take(self) -> Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.process.is_alive():
                    self._busy.add(child.pid)
                    return child
                self._children.pop(child.pid, None)
        child = self._start()
        with self._lock:
            self._busy.add(child.pid)
        return child

    def _give_back(self, child: Child) -> None:
        with self._lock:
            self._busy.discard(child.pid)
            keep = not self._closed and len(self._idle) < self.max_idle
            if keep:
                self._idle.append(child)
        if not keep:
            self._discard(child, kill=False)

    def _start(self) -> Child:
        if self._closed:
            raise ChildStartError("the worker is stopping")
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(  # type: ignore[attr-defined]
            target=serve_child, args=(child_end, self._config, APP_FACTORY), name="task-child", daemon=True)
        process.start()
        child_end.close()
        try:
            if not parent_end.poll(START_TIMEOUT):
                raise ChildStartError(f"it was not ready within {START_TIMEOUT:g} s")
            _ready, pid = parent_end.recv()
        except (EOFError, OSError, ChildStartError) as exc:
            process.kill()
            process.join(timeout=STOP_GRACE)
            if isinstance(exc, ChildStartError):
                raise
            raise ChildStartError(f"it exited with code {process.exitcode} before it was ready "
                                  "(its error is in the worker's log)") from None
        child = Child(process, parent_end, pid)
        with self._lock:
            self._children[pid] = child
        log.info("child process %s started for isolated tasks", pid)
        return child

    def _discard(self, child: Child, *, kill: bool) -> None:
        """Stop a child (at once with ``kill``, else after its current work) and forget it."""
        with self._lock:
            self._busy.discard(child.pid)
            self._children.pop(child.pid, None)
            if child in self._idle:
                self._idle.remove(child)
        if kill:
            child.process.kill()
        else:
            with contextlib.suppress(BrokenPipeError, EOFError, OSError):
                child.conn.send(None)  # it exits after the task it runs, if any
        threading.Thread(target=_reap, args=(child,), name="task-child-reaper", daemon=True).start()
        with self._lock:
            replace = not self._closed and not self._idle
        if replace:  # the next isolated task should not wait for a child to start
            self.warm()

    @property
    def pids(self) -> list[int]:
        """The pids of the children alive now (idle or busy)."""
        with self._lock:
            return sorted(self._children)

    def close(self) -> None:
        """Stop every child: idle ones exit, busy ones (past the worker's grace) are killed."""
        with self._lock:
            self._closed = True
            children = list(self._children.values())
            busy = set(self._busy)
        for child in children:
            self._discard(child, kill=child.pid in busy)
        for child in children:
            child.process.join(timeout=STOP_GRACE)


def _reap(child: Child) -> None:
    """Wait for a stopped child (no zombie), killing it if it does not exit in time."""
    child.process.join(timeout=STOP_GRACE)
    if child.process.is_alive():
        child.process.kill()
        child.process.join(timeout=STOP_GRACE)
    # The pipe is not closed here: the worker thread of a killed busy child may still read it
    # (it sees the end of file); it closes when the last reference goes.
