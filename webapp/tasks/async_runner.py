"""Async processors: attempts of ``async def process`` run on one event loop in the worker.

The consumer claims tasks of async types in a lane of their own (``pool.py``'s side lane), up
to ``ASYNC_TASK_ASYNC_CONCURRENCY`` at a time, and hands each to ``AsyncRunner.submit``; the
loop runs them side by side without a thread each. An attempt has what a thread-run one has:

* its own app context, pushed inside its coroutine (Flask keeps it in a ``ContextVar``, so it is
  the coroutine's alone), hence its own ``db.session``;
* its own progress/cancel context (``progress.py``) and log context with secrets masked
  (``task_log_context``), both ``ContextVar``-based too;
* the same outcome rules as ``Consumer._execute``: ``None`` or a dict is a success, an exception
  a retryable failure, ``TaskCancelled`` a cancelled attempt, anything else a non-retryable one;
* the type's time limits (``TaskLimits``, with an operator's runtime override, as
  ``time_limits.AttemptLimits`` gives them): past the soft limit the attempt is asked to stop as
  a thread-run one is (a cancel request and a SOFT_TIME_LIMIT event, through the same
  watchdog); past the hard limit, unlike a thread, a coroutine can be stopped: it is cancelled at
  its current ``await`` and fails "time limit of N s exceeded", retried by its policy.

Database work: the session is synchronous, so a query run on the loop blocks every other attempt
while it waits. Processors wrap it in ``await asyncio.to_thread(...)`` (the copied context
carries the app context, so the thread uses the attempt's session). What the attempt wrote is
committed with its outcome, in one transaction, on a thread of the loop's small executor, exactly
as for a thread-run processor; an attempt that wrote nothing joins the finisher's batches
without leaving the loop.

On stop, attempts still running at the end of the grace are cancelled (``CancelledError`` inside
the processor), their writes rolled back, and the consumer gives their tasks back like a
thread-run attempt that outlived the grace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import traceback as tb_module
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from flask import Flask

from ..extensions import db
from ..logging_setup import task_log_context
from .attempt import TaskInfo
from .direct import first_line
from .errors import TaskCancelled
from .limits import time_limit_message
from .masking import declared_sensitive_fields, scrub_secrets, secret_values
from .processor import TaskProcessor, TaskResult
from .progress import TaskContext
from .progress import enter as enter_context
from .registry import payload_from_json
from .service import AsyncTaskService
from .time_limits import AttemptLimits

log = logging.getLogger(__name__)

# Threads for what must leave the loop: committing an attempt's own writes with its outcome,
# and the processors' ``asyncio.to_thread`` calls. Few: each waits on one database round trip.
EXECUTOR_THREADS = 8
LOOP_START_TIMEOUT = 10.0


class AttemptHost(Protocol):
    """What the runner needs of its consumer (``consumer.Consumer``)."""

    app: Flask
    attempt_limits: AttemptLimits

    def queue_outcome(self, task: TaskInfo, result: TaskResult, trace: str | None) -> bool: ...

    def finish_attempt(self, service: AsyncTaskService, task: TaskInfo, result: TaskResult,
                       trace: str | None) -> None: ...

    def side_done(self, item: TaskInfo, *, finished: bool = True) -> None: ...


class AsyncRunner:
    """One event-loop thread running async processors' attempts; ``start()``, ``submit()``, ``stop()``."""

    def __init__(self, host: AttemptHost) -> None:
        self.host = host
        self.app = host.app
        self.registry = self.app.extensions["async_task"].registry
        self.loop = asyncio.new_event_loop()
        self._executor = ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="task-async-io")
        self.loop.set_default_executor(self._executor)
        self._attempts: set[asyncio.Task[Any]] = set()  # these two touched on the loop thread only
        self._in_process: set[asyncio.Task[Any]] = set()  # attempts inside process(), not finishing
        self._thread: threading.Thread | None = None

    def start(self) -> AsyncRunner:
        ready = threading.Event()
        self.loop.call_soon(ready.set)
        self._thread = threading.Thread(target=self.loop.run_forever, name="task-async-loop", daemon=True)
        self._thread.start()
        ready.wait(LOOP_START_TIMEOUT)
        return self

    def submit(self, tasks: list[TaskInfo]) -> None:
        """Start the attempts of ``tasks`` on the loop (from any thread; never blocks)."""
        self.loop.call_soon_threadsafe(self._spawn, tasks)

    def _spawn(self, tasks: list[TaskInfo]) -> None:
        for task in tasks:
            attempt = self.loop.create_task(self._attempt(task), name=f"task-{task.id}")
            self._attempts.add(attempt)
            attempt.add_done_callback(self._attempts.discard)

    def stop(self, timeout: float) -> int:
        """Cancel the attempts still running, wait up to ``timeout`` for them to unwind, end the loop.

        Returns how many were cancelled; their tasks are still in the consumer's running set,
        so its stop gives them back.
        """
        if self._thread is None:
            return 0
        cancelled = 0
        try:
            cancelled = asyncio.run_coroutine_threadsafe(self._cancel_all(timeout), self.loop).result(timeout + 1)
        except Exception:
            log.exception("async runner: cancelling the running attempts failed")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout + 1)
        self._thread = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        if not self.loop.is_running():
            self.loop.close()
        return cancelled

    async def _cancel_all(self, timeout: float) -> int:
        """Cancel attempts still in ``process()``; those already writing their outcome finish it."""
        stopped = list(self._in_process)
        for attempt in stopped:
            attempt.cancel()
        pending = [attempt for attempt in self._attempts if not attempt.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        return len(stopped)

    # -- one attempt, on the loop ------------------------------------------------------------

    async def _attempt(self, task: TaskInfo) -> None:
        finished = False
        try:
            processor = self.registry.get(task.task_type)
            secrets = secret_values(task.payload, declared_sensitive_fields(processor))
            scrub = functools.partial(scrub_secrets, secrets=secrets) if secrets else None
            with task_log_context(task, scrub), self.app.app_context():
                await self._run(processor, task)
            finished = True
        except asyncio.CancelledError:
            log.warning("task %s (%s) attempt %s: stopped with the worker; it is given back",
                        task.id, task.task_type, task.attempt)
        except Exception:
            log.exception("task %s: unexpected error in the async runner", task.id)
            finished = True
        finally:
            self.host.side_done(task, finished=finished)

    async def _run(self, processor: TaskProcessor | None, task: TaskInfo) -> None:
        """Run the attempt in this coroutine's app context, then hand its outcome on."""
        try:
            result, trace, discard = await self._execute(processor, task)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(_close_session, True))
            raise
        if not _in_transaction() and self.host.queue_outcome(task, result, trace):
            db.session.remove()  # it holds no connection: nothing was read or written (or rolled back)
            return
        # The attempt's own writes (or their rollback) and its outcome: one transaction, off the loop.
        await asyncio.to_thread(self._finish, task, result, trace, discard)

    async def _execute(self, processor: TaskProcessor | None,
                       task: TaskInfo) -> tuple[TaskResult, str | None, bool]:
        """(result, traceback, discard the attempt's writes), as ``Consumer._execute`` decides them."""
        if processor is None:
            return TaskResult.failure(f"no processor registered for task type {task.task_type!r}",
                                      retryable=False), None, False
        context = TaskContext(self.app, task)
        enter_context(context)
        current = asyncio.current_task()
        if current is not None:
            self._in_process.add(current)
        try:
            payload: Any = task.payload
            if processor.payload_type is not None:
                payload = payload_from_json(processor.payload_type, task.payload)
            limits = self.host.attempt_limits.limits_for(task)
            time_limit = limits.time_limit
            pending: Any = processor.process(task, payload)  # a coroutine (the registry checked): awaited next
            deadline = asyncio.timeout(time_limit)
            try:
                # The watchdog handles the soft limit; the hard one cancels the coroutine itself.
                with self.host.attempt_limits.watch(task, dataclasses.replace(limits, time_limit=None), context):
                    async with deadline:
                        result = await pending
            except TimeoutError:
                if time_limit is None or not deadline.expired():
                    raise  # the processor's own timeout: an ordinary exception
                log.warning("task %s (%s) attempt %s stopped at its time limit of %gs", task.id,
                            task.task_type, task.attempt, time_limit)
                return TaskResult.failure(time_limit_message(time_limit)), None, True
        except TaskCancelled:
            log.info("task %s (%s) attempt %s cancelled on request", task.id, task.task_type, task.attempt)
            return self.host.attempt_limits.cancelled_result(task), None, True
        except Exception as exc:
            log.warning("task %s (%s) attempt %s raised %s: %s", task.id, task.task_type, task.attempt,
                        type(exc).__name__, exc)
            return TaskResult.failure(f"{type(exc).__name__}: {exc}"), tb_module.format_exc(), True
        finally:
            if current is not None:
                self._in_process.discard(current)
            enter_context(None)
            await context.settle()  # the last progress, written off the loop
        if result is None:
            return TaskResult.success(), None, False
        if isinstance(result, dict):
            return TaskResult.success(result), None, False
        if not isinstance(result, TaskResult):
            return TaskResult.failure(f"process() returned {type(result).__name__}, expected TaskResult",
                                      retryable=False), None, True
        return result, None, False

    def _finish(self, task: TaskInfo, result: TaskResult, trace: str | None, discard: bool) -> None:
        """On an executor thread, in the attempt's app context (copied by ``to_thread``)."""
        try:
            if discard:
                _close_session(False)
            self.host.finish_attempt(AsyncTaskService(), task, result, trace)
        finally:
            db.session.remove()


def _in_transaction() -> bool:
    """Whether the attempt's session holds a transaction; never creates one (most attempts have none)."""
    return db.session.registry.has() and db.session().in_transaction()


def _close_session(remove: bool) -> None:
    """Roll back the attempt's writes; a dead connection is thrown away instead (see consumer.py)."""
    try:
        db.session.rollback()
    except Exception as exc:
        log.warning("rolling back an async attempt failed (%s); discarding its session", first_line(exc))
        remove = True
    if remove:
        db.session.remove()


def split_task_types(registry: Any, task_types: list[str] | None) -> tuple[list[str] | None, list[str]]:
    """(types the worker threads claim, types the event loop claims) of a consumer's ``task_types``.

    Without async processors the first is ``task_types`` unchanged (``None``: every registered type).
    """
    types = registry.task_types() if task_types is None else task_types
    async_types = [task_type for task_type in types if registry.is_async(task_type)]
    if not async_types:
        return task_types, []
    return [task_type for task_type in types if task_type not in async_types], async_types
