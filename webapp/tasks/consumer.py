"""The batch consumer: claims due tasks and runs them on a pool of worker threads.

Shape of one consumer process, on the claim pool of ``pool.py``:

* a **dispatcher thread** claims up to ``min(batch_size, free threads + prefetch)`` due tasks
  in one statement whenever it is woken, and hands them to the pool. It is woken by the
  APScheduler ``poll`` job every ``poll_interval``, by a submit in this process, by a
  PostgreSQL ``NOTIFY`` or an SQLite commit from another process (``wakeup.py``), and by a
  thread finishing while the last claim came back full (drain: no waiting for the next
  interval while work is queued);
* ``concurrency`` **worker threads**, each running one task at a time in its own app context;
  outcomes of processors that wrote nothing themselves go to one **finisher thread**, which
  writes them in batches;
* with ``async def`` processors registered, one **event-loop thread** (``async_runner.py``)
  running up to ``ASYNC_TASK_ASYNC_CONCURRENCY`` of their attempts, claimed in a lane of their own;
* APScheduler jobs for the **heartbeat** (worker row and Redis lock expiry) and the
  **recovery sweep**, both every ``heartbeat_interval``, and the **housekeeping** jobs of
  ``housekeeping.py`` (start deadlines, retention, history, recurring schedules);
* a notification dispatcher (``webapp.notifications.dispatcher``) on threads of its own.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
import traceback as tb_module
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Flask
from sqlalchemy.engine import make_url

from ..config import EngineSettings, engine_settings
from ..extensions import db
from ..logging_setup import task_log_context
from ..notifications.dispatcher import NotificationDispatcher
from .async_runner import AsyncRunner, split_task_types
from .direct import DirectConnection, first_line, is_lost_connection
from .errors import TaskCancelled
from .housekeeping import add_housekeeping_jobs
from .lock_keeper import TaskLockKeeper
from .masking import declared_sensitive_fields, scrub_secrets, secret_values
from .pool import ClaimPool
from .processor import TaskInfo, TaskResult
from .progress import TaskContext
from .progress import enter as enter_context
from .registry import payload_from_json
from .service import WAKE_CHANNEL, AsyncTaskService, FinishedAttempt, FinishOutcome
from .time_limits import AttemptLimits, TimeLimitExceeded
from .wakeup import PostgresListener, SQLiteWatcher

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger(__name__)

FINISH_BATCH_LIMIT = 500
NOTIFIER_STOP_GRACE = 5.0


class Consumer(ClaimPool[TaskInfo]):
    """One consumer (worker) process's engine; ``start()`` it, ``stop()`` it on shutdown."""

    def __init__(
        self,
        app: Flask,
        *,
        settings: EngineSettings | None = None,
        concurrency: int | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        heartbeat_interval: float | None = None,
        max_processing_time: float | None = None,
        task_types: list[str] | None = None,
        listen: bool = True,
        prefetch: int | None = None,
    ) -> None:
        self.settings = settings = settings or engine_settings(app)
        super().__init__(name="task consumer", concurrency=concurrency or settings.concurrency,
                         batch_size=batch_size or settings.batch_size,
                         poll_interval=poll_interval or settings.poll_interval,
                         prefetch=settings.prefetch if prefetch is None else prefetch)
        self.app = app
        self.heartbeat_interval = heartbeat_interval or settings.heartbeat_interval
        self.max_processing_time = max_processing_time or settings.max_processing_time
        self.task_types = task_types
        self._thread_types, self._async_types = task_types, list[str]()
        self._async_runner: AsyncRunner | None = None
        self.listen = listen
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.engine = app.extensions["async_task"]
        self.lock_keeper = TaskLockKeeper(app, self.engine.locks, self.worker_id)
        # Time limits and process isolation (time_limits.py, isolation.py).
        self.attempt_limits = AttemptLimits(app, settings, self.worker_id, self.concurrency)

        # Outcomes of attempts whose processor wrote nothing itself, written in batches.
        self._finished: queue.Queue[FinishedAttempt | None] = queue.Queue()
        self._unwritten = 0  # handed to the finisher, not yet committed
        self._finisher_closed = False
        self._finisher: threading.Thread | None = None
        self._running: dict[int, TaskInfo] = {}
        # Every attempt this consumer holds, from its claim until its outcome is written.
        self._owned: set[tuple[int, str]] = set()
        self._scheduler: BackgroundScheduler | None = None
        self._claim_failures = 0  # in a row; the first one after a lost connection retries at once
        self.notifier: NotificationDispatcher | None = None
        self.processed = 0
        self.failed = 0
        self.started = False
        self._claim_direct: DirectConnection | None = None
        self._finish_direct: DirectConnection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Consumer:
        """Register the worker, start the threads, the wake-up source and the scheduled jobs."""
        self._thread_types, self._async_types = split_task_types(self.engine.registry, self.task_types)
        if self._async_types:  # async processors get an event loop and a claim lane of their own
            self.side_capacity = self.settings.async_concurrency
        with self.app.app_context():
            AsyncTaskService().register_worker(self.worker_id, socket.gethostname(), os.getpid(),
                                               self.slots, self.heartbeat_interval)
            if db.engine.dialect.name == "postgresql" and self.settings.direct_connections:
                # The dispatcher's claims and the finisher's success batches each get a connection
                # of their own in autocommit: one round trip a statement (see direct.py).
                # Claims need not wait for their WAL flush: a claim a database crash forgets puts the
                # task back to PENDING, and the attempt's finish is then refused by its token, so
                # the task runs again (at least once, as after any crash). Outcomes stay durable.
                self._claim_direct = DirectConnection(db.engine.url, durable=False)
                self._finish_direct = DirectConnection(db.engine.url)
        finisher = threading.Thread(target=self._finish_loop, name="task-finisher", daemon=True)
        finisher.start()
        self._finisher = finisher
        if self._async_types:
            self._async_runner = AsyncRunner(self).start()
        self.start_threads("task-worker", "task-dispatcher")
        self.attempt_limits.start()
        # Notifications go out on the notifier's own threads, never on the task workers.
        self.notifier = NotificationDispatcher(self.app, settings=self.settings).start()
        if self.listen:
            self._start_wakeup_source()
        # Imported here: only a running consumer needs APScheduler, not every command that builds the app.
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"coalesce": True, "max_instances": 1,
                                                                    "misfire_grace_time": None})
        now = datetime.now(UTC)
        scheduler.add_job(self.wake, "interval", seconds=self.poll_interval, id="poll", next_run_time=now)
        # First beat at once: registration stamped the row before the threads above started, and
        # a slow start plus a full interval must not look like three missed beats to a peer's sweep.
        scheduler.add_job(self._heartbeat, "interval", seconds=self.heartbeat_interval, id="heartbeat",
                          next_run_time=now)
        scheduler.add_job(self._recover, "interval", seconds=self.heartbeat_interval, id="recovery",
                          next_run_time=now)
        add_housekeeping_jobs(scheduler, self.app, self.settings, self.heartbeat_interval, now)
        scheduler.start()
        self._scheduler = scheduler
        self.engine.local_consumers.append(self)
        self.started = True
        log.info("consumer %s started: concurrency=%s batch=%s poll=%ss async=%s", self.worker_id,
                 self.concurrency, self.batch_size, self.poll_interval, self.side_capacity or "none")
        return self

    def stop(self, grace: float | None = None) -> list[int]:
        """Claim nothing new, let running tasks finish within ``grace``, release the rest."""
        if not self.started or self.stopping:
            return []
        grace = self.settings.shutdown_grace if grace is None else grace
        # A claim already in flight must land in the queue before the leftovers are counted,
        # or its tasks stay PROCESSING under a stopped worker until a sweep recovers them.
        self.stop_claiming()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self.notifier is not None:
            self.notifier.stop(grace=min(grace, NOTIFIER_STOP_GRACE))
        if self in self.engine.local_consumers:
            self.engine.local_consumers.remove(self)
        deadline = time.monotonic() + grace
        unstarted = self.take_unstarted()  # claimed (prefetched) but never started: given back
        self.wait_until_idle(deadline)
        if self._async_runner is not None:  # async attempts past the grace: cancelled, given back below
            self._async_runner.stop(timeout=min(grace, NOTIFIER_STOP_GRACE))
            self._async_runner = None
        self.end_workers(time.monotonic())
        with self._lock:
            self._finisher_closed = True  # late finishers (past the grace) write their own outcome
            self._finished.put(None)
        if self._finisher is not None:
            self._finisher.join(timeout=5)
        with self._lock:
            leftovers = [*self._running.values(), *unstarted]
        released: list[int] = []
        with self.app.app_context():
            service = AsyncTaskService()
            if leftovers:
                released = service.release_tasks(leftovers, self.worker_id,
                                                 reason="worker shut down before the task finished")
                log.warning("released %d task(s) on shutdown: %s", len(released), released)
            self.lock_keeper.release(leftovers)
            service.stop_worker(self.worker_id)
            db.session.remove()
        # Child processes still running a task are killed only now: their tasks were released
        # above, so the failure their worker threads then report is refused, not counted.
        self.attempt_limits.close()
        for direct in (self._claim_direct, self._finish_direct):
            if direct is not None:
                direct.close()
        self.started = False
        log.info("consumer %s stopped", self.worker_id)
        return released

    @property
    def slots(self) -> int:
        """Attempts it runs at once, the worker row's concurrency: threads plus async slots."""
        return self.concurrency + self.side_capacity

    def _is_idle(self) -> bool:
        return self._inflight == 0 and self._unwritten == 0

    # -- the pool's side: claiming -----------------------------------------------------------

    def claim(self, wanted: int) -> list[TaskInfo]:
        """Claim due tasks of thread-run types; see ``_claim_of``."""
        return self._claim_of(wanted, self._thread_types) if self._thread_types != [] else []

    def claim_side(self, wanted: int) -> list[TaskInfo]:
        """Claim due tasks of async types, for the event loop."""
        return self._claim_of(wanted, self._async_types)

    def start_side(self, items: list[TaskInfo]) -> None:
        assert self._async_runner is not None  # side_capacity is 0 without it
        self._async_runner.submit(items)

    def _claim_of(self, wanted: int, task_types: list[str] | None) -> list[TaskInfo]:
        """Claim due tasks for this worker and take their Redis locks; the ones it may run."""
        with self.app.app_context():
            try:
                claimed = AsyncTaskService().claim_due_tasks(self.worker_id, wanted, task_types,
                                                             direct=self._claim_direct)
            finally:
                db.session.remove()
        self._claim_failures = 0
        with self._lock:  # owned from the moment the claim returns (see _release_forgotten_attempts)
            self._owned.update((task.id, task.claim_token) for task in claimed)
        kept = self.lock_keeper.lock_claimed(claimed)
        with self._lock:
            self._owned.difference_update((t.id, t.claim_token) for t in claimed if t not in kept)
            for task in kept:
                self._running[task.id] = task
        return kept

    def claim_failed(self, exc: Exception) -> float:
        """A lost connection is reopened by the next claim, at once and with one log line."""
        self._claim_failures += 1
        if is_lost_connection(exc):
            if self._claim_failures == 1:
                log.warning("claim: the database connection was lost (%s); reconnecting", first_line(exc))
                return 0.0
            log.warning("claim: the database is still unreachable (%s); retrying in %gs", first_line(exc),
                        min(1.0, self.poll_interval))
            return min(1.0, self.poll_interval)
        log.exception("claim failed; retrying at the next poll")
        return self.poll_interval

    # -- the pool's side: running tasks -------------------------------------------------------

    def run_item(self, item: TaskInfo) -> None:
        processor = self.app.extensions["async_task"].registry.get(item.task_type)
        secrets = secret_values(item.payload, declared_sensitive_fields(processor))
        scrub = functools.partial(scrub_secrets, secrets=secrets) if secrets else None
        with task_log_context(item, scrub):  # every log line of the attempt names the task (never its secrets)
            self._run(item)

    def item_done(self, item: TaskInfo) -> None:
        self._running.pop(item.id, None)

    def _run(self, task: TaskInfo) -> None:
        with self.app.app_context():
            service = AsyncTaskService()
            try:
                result, trace = self._execute(service, task)
                # The processor did no database work: nothing needs its transaction, so the
                # outcome joins the finisher's next batch and this thread takes the next task.
                if db.session().in_transaction() or not self.queue_outcome(task, result, trace):
                    self.finish_attempt(service, task, result, trace)
            finally:
                db.session.remove()

    def queue_outcome(self, task: TaskInfo, result: TaskResult, trace: str | None) -> bool:
        """Hand an outcome to the finisher's batches (never blocks); False once it closed on stop."""
        with self._lock:
            if self._finisher_closed:
                return False
            self._unwritten += 1
            self._finished.put(FinishedAttempt(task, result, trace))
        return True

    def finish_attempt(self, service: AsyncTaskService, task: TaskInfo, result: TaskResult,
                       trace: str | None) -> None:
        """Commit the outcome in the processor's session, its own writes with it."""
        try:
            outcome = service.finish_task(task, result, worker_id=self.worker_id, traceback=trace)
        except Exception as exc:
            # Committing the processor's own writes failed (constraint, lost connection):
            # the attempt fails as a whole and nothing of it is kept.
            outcome = self._finish_as_failed(service, task, exc)
        self._after_finish([task], [outcome])

    def _finish_as_failed(self, service: AsyncTaskService, task: TaskInfo, exc: Exception) -> FinishOutcome:
        """Record an attempt whose outcome could not be committed as failed (it is retried).

        If that cannot be written either, the outcome is unknown: the attempt is forgotten here,
        so the next heartbeat gives the task back instead of leaving it PROCESSING until
        max-processing-time.
        """
        trace = tb_module.format_exc()
        if is_lost_connection(exc):
            log.warning("task %s: the database connection was lost while finishing (%s); "
                        "recording the attempt as failed", task.id, first_line(exc))
        else:
            log.exception("task %s: finishing failed", task.id)
        try:
            db.session.rollback()
            return service.finish_task(
                task, TaskResult.failure(f"could not commit the result: {type(exc).__name__}: {exc}"),
                worker_id=self.worker_id, traceback=trace)
        except Exception as second:
            db.session.rollback()
            log.error("task %s: could not record the failed attempt either (%s); the heartbeat gives "
                      "the task back", task.id, first_line(second))
            return FinishOutcome(None)

    def _after_finish(self, tasks: list[TaskInfo], outcomes: list[FinishOutcome]) -> None:
        with self._lock:  # finished: the heartbeat must stop extending the locks released next
            for task in tasks:
                self._running.pop(task.id, None)
                self._owned.discard((task.id, task.claim_token))
        self.lock_keeper.release(tasks)
        for task, outcome in zip(tasks, outcomes, strict=True):
            if outcome.status == "SUCCESS":
                self.processed += 1
            elif outcome.status is not None:
                self.failed += 1
            log.debug("task %s (%s) attempt %s -> %s", task.id, task.task_type, task.attempt,
                      outcome.status or "lease lost, result discarded")

    def _finish_loop(self) -> None:
        """Write queued outcomes: everything that queued up while the last batch committed."""
        while True:
            first = self._finished.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < FINISH_BATCH_LIMIT:
                try:
                    item = self._finished.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._finished.put(None)
                    break
                batch.append(item)
            try:
                outcomes = self._write_batch(batch)
                self._after_finish([item.task for item in batch], outcomes)
            finally:
                with self._lock:
                    self._unwritten -= len(batch)
                    self._idle.notify_all()

    def _write_batch(self, batch: list[FinishedAttempt]) -> list[FinishOutcome]:
        with self.app.app_context():
            try:
                return AsyncTaskService().finish_many(batch, worker_id=self.worker_id,
                                                      direct=self._finish_direct)
            except Exception as exc:
                db.session.rollback()
                if is_lost_connection(exc):  # the direct connection reopens at its next use
                    log.warning("batch finish of %d task(s): the database connection was lost (%s); "
                                "finishing them one by one", len(batch), first_line(exc))
                else:
                    log.exception("batch finish of %d task(s) failed; finishing them one by one", len(batch))
            finally:
                db.session.remove()
        outcomes = []
        for item in batch:  # one bad row (or a dropped connection) must not sink the others
            with self.app.app_context():
                try:
                    outcomes.append(AsyncTaskService().finish_task(
                        item.task, item.result, worker_id=self.worker_id, traceback=item.traceback))
                except Exception:
                    log.exception("task %s: finishing failed; recovery will retry it", item.task.id)
                    outcomes.append(FinishOutcome(None))
                finally:
                    db.session.remove()
        return outcomes

    def _execute(self, service: AsyncTaskService, task: TaskInfo) -> tuple[TaskResult, str | None]:
        processor = service.registry.get(task.task_type)
        if processor is None:
            return TaskResult.failure(f"no processor registered for task type {task.task_type!r}",
                                      retryable=False), None
        limits = self.attempt_limits.limits_for(task)
        if limits.isolation == "process":
            return self.attempt_limits.run_isolated(processor, task, limits)
        context = TaskContext(self.app, task)
        enter_context(context)
        try:
            payload: Any = task.payload
            if processor.payload_type is not None:
                payload = payload_from_json(processor.payload_type, task.payload)
            with self.attempt_limits.watch(task, limits, context):
                result = processor.process(task, payload)
        except TaskCancelled:
            _discard_attempt_writes(task)  # a cancelled attempt keeps none of its writes
            log.info("task %s (%s) attempt %s cancelled on request", task.id, task.task_type, task.attempt)
            return self.attempt_limits.cancelled_result(task), None
        except TimeLimitExceeded as exc:  # returned past its hard limit: what it did is discarded
            _discard_attempt_writes(task)
            return TaskResult.failure(str(exc)), None
        except Exception as exc:
            _discard_attempt_writes(task)  # the processor's own writes go with its failed attempt
            log.warning("task %s (%s) attempt %s raised %s: %s", task.id, task.task_type, task.attempt,
                        type(exc).__name__, exc)
            return TaskResult.failure(f"{type(exc).__name__}: {exc}"), tb_module.format_exc()
        finally:
            enter_context(None)
            context.flush()
        if result is None:
            return TaskResult.success(), None
        if isinstance(result, dict):
            return TaskResult.success(result), None
        if not isinstance(result, TaskResult):
            _discard_attempt_writes(task)
            return TaskResult.failure(f"process() returned {type(result).__name__}, expected TaskResult",
                                      retryable=False), None
        return result, None

    # -- heartbeat, recovery, Redis ----------------------------------------------------------

    def _heartbeat(self) -> None:
        with self.app.app_context():
            try:
                alive = AsyncTaskService().heartbeat(self.worker_id, self.busy, self.processed, self.failed)
                if not alive:
                    log.error("worker %s had been declared dead (missed heartbeats); rejoining. Results "
                              "of tasks recovered meanwhile will be refused by their fencing token.",
                              self.worker_id)
                    AsyncTaskService().revive_worker(self.worker_id, socket.gethostname(), os.getpid(),
                                                     self.slots, self.heartbeat_interval)
                self._release_forgotten_attempts()
            except Exception as exc:
                if is_lost_connection(exc):  # the pool reconnects at the next beat
                    log.warning("heartbeat: the database connection was lost (%s)", first_line(exc))
                else:
                    log.exception("heartbeat failed")
            finally:
                db.session.remove()
        with self._lock:
            running = [(t.id, t.claim_token) for t in self._running.values()]
        self.lock_keeper.extend(running, self._still_running)

    def _still_running(self, task_ids: set[int]) -> set[int]:
        with self._lock:
            return {task_id for task_id in task_ids if task_id in self._running}

    def _release_forgotten_attempts(self) -> None:
        """Give back tasks the database says this worker holds but the worker does not know of.

        That happens when a claim committed but its answer never arrived (connection lost in
        between), or when writing an outcome failed twice: the worker is alive, so the recovery
        sweep would leave the task PROCESSING until max-processing-time.
        """
        held = AsyncTaskService().attempts_held_by(self.worker_id, older_than=2 * self.heartbeat_interval)
        with self._lock:
            forgotten = [task for task in held if (task.id, task.claim_token) not in self._owned]
        if forgotten:
            log.warning("releasing %d task(s) this worker holds but lost track of: %s",
                        len(forgotten), [task.id for task in forgotten])
            AsyncTaskService().release_tasks(forgotten, self.worker_id,
                                             reason="the worker lost track of this attempt")

    def _recover(self) -> None:
        with self.app.app_context():
            try:
                # TTL below the 3-beat stale threshold: a sweeper killed while holding it must not
                # delay the recovery of its own tasks (overlapping sweeps are harmless, every
                # recovery is a conditional update).
                self.lock_keeper.sweep_under_lock(self._sweep, ttl_seconds=self.heartbeat_interval * 2)
            except Exception as exc:
                if is_lost_connection(exc):  # the pool reconnects at the next sweep
                    log.warning("recovery sweep: the database connection was lost (%s)", first_line(exc))
                else:
                    log.exception("recovery sweep failed")
            finally:
                db.session.remove()

    def _sweep(self) -> list[int]:
        return AsyncTaskService().recover_orphans(self.max_processing_time, self.heartbeat_interval,
                                                  before_commit=self.lock_keeper.drop)

    @property
    def redis_ok(self) -> bool:
        """Whether Redis answered this consumer's last call (always True without Redis)."""
        return self.lock_keeper.redis_ok

    # -- cross-process wake-up ---------------------------------------------------------------

    def _start_wakeup_source(self) -> None:
        """PostgreSQL: LISTEN for submits of other processes; SQLite: watch for their commits."""
        with self.app.app_context():
            url = db.engine.url
        if url.get_backend_name() == "postgresql":
            # LISTEN needs a session of its own: behind PgBouncer in transaction mode, point
            # ASYNC_TASK_LISTEN_DATABASE_URL straight at PostgreSQL (docs/deploy.md).
            listen_url = self.settings.listen_database_url
            PostgresListener(make_url(listen_url) if listen_url else url, WAKE_CHANNEL, self.wake,
                             self._stopping).start("task-wake-listener")
        elif url.get_backend_name() == "sqlite":
            SQLiteWatcher(url.database or "", self.wake, self._stopping).start("task-wake-watcher")


def _discard_attempt_writes(task: TaskInfo) -> None:
    """Roll back the processor's writes; a dead connection must not lose the attempt's outcome.

    When the connection died under the processor (``pg_terminate_backend``, a failover) the
    rollback itself raises. The session is then thrown away (its connection is invalidated, and
    the server rolled the transaction back when the connection ended), so the failure outcome is
    still written, on a fresh connection, instead of leaving the task PROCESSING under a live
    worker until max-processing-time.
    """
    try:
        db.session.rollback()
    except Exception as exc:
        log.warning("task %s: rolling back the attempt failed (%s); discarding its session",
                    task.id, first_line(exc))
        db.session.remove()
