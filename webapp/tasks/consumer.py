"""The batch consumer: claims due tasks and runs them on a pool of worker threads.

Shape of one consumer process:

* a **dispatcher thread** claims up to ``min(batch_size, free threads)`` due tasks in one
  statement whenever it is woken, and hands them to the pool. It is woken by the APScheduler
  ``poll`` job every ``poll_interval``, by a submit in this process, by a PostgreSQL
  ``NOTIFY`` from a submit in another process, and by a thread finishing while the last claim
  came back full (drain: no waiting for the next interval while work is queued);
* ``concurrency`` **worker threads**, each running one task at a time in its own app context;
* APScheduler jobs for the **heartbeat** (worker row and Redis lock expiry) and the
  **recovery sweep**, both every ``heartbeat_interval``.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import traceback as tb_module
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask
from sqlalchemy.engine import make_url

from ..extensions import db
from ..logging_setup import task_log_context
from .direct import DirectConnection
from .errors import TaskCancelled
from .locks import RedisUnavailable, TaskLocks
from .processor import TaskInfo, TaskResult
from .progress import TaskContext
from .progress import enter as enter_context
from .registry import payload_from_json
from .service import WAKE_CHANNEL, AsyncTaskService, FinishedAttempt, FinishOutcome

log = logging.getLogger(__name__)


class Consumer:
    """One consumer (worker) process's engine; ``start()`` it, ``stop()`` it on shutdown."""

    def __init__(
        self,
        app: Flask,
        *,
        concurrency: int | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        heartbeat_interval: float | None = None,
        max_processing_time: float | None = None,
        task_types: list[str] | None = None,
        listen: bool = True,
        prefetch: int | None = None,
    ) -> None:
        config = app.config
        self.app = app
        self.concurrency = concurrency or config["ASYNC_TASK_CONCURRENCY"]
        self.batch_size = batch_size or config["ASYNC_TASK_BATCH_SIZE"]
        # Tasks claimed ahead of free threads, so short tasks never wait for a claim round trip.
        self.prefetch = config["ASYNC_TASK_PREFETCH"] if prefetch is None else prefetch
        self.poll_interval = poll_interval or config["ASYNC_TASK_POLL_INTERVAL"]
        self.heartbeat_interval = heartbeat_interval or config["ASYNC_TASK_HEARTBEAT_INTERVAL"]
        self.max_processing_time = max_processing_time or config["ASYNC_TASK_MAX_PROCESSING_TIME"]
        self.task_types = task_types
        self.listen = listen
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.engine = app.extensions["async_task"]
        self.locks: TaskLocks | None = self.engine.locks

        self._queue: queue.Queue[TaskInfo | None] = queue.Queue()
        # Outcomes of attempts whose processor wrote nothing itself, written in batches.
        self._finished: queue.Queue[FinishedAttempt | None] = queue.Queue()
        self._unwritten = 0  # handed to the finisher, not yet committed
        self._finisher_closed = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[int, TaskInfo] = {}
        # Every attempt this consumer holds, from its claim until its outcome is written.
        self._owned: set[tuple[int, str]] = set()
        self._inflight = 0
        self._last_claim_full = False
        self._threads: list[threading.Thread] = []
        self._scheduler: BackgroundScheduler | None = None
        self.processed = 0
        self.failed = 0
        self.redis_ok = True
        self.started = False
        self._claim_direct: DirectConnection | None = None
        self._finish_direct: DirectConnection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Consumer:
        with self.app.app_context():
            AsyncTaskService().register_worker(self.worker_id, socket.gethostname(), os.getpid(),
                                               self.concurrency, self.heartbeat_interval)
            if db.engine.dialect.name == "postgresql" and self.app.config["ASYNC_TASK_DIRECT_CONNECTIONS"]:
                # The dispatcher's claims and the finisher's success batches each get a connection
                # of their own in autocommit: one round trip a statement (see direct.py).
                # Claims need not wait for their WAL flush: a claim a database crash forgets puts the
                # task back to PENDING, and the attempt's finish is then refused by its token, so
                # the task runs again (at least once, as after any crash). Outcomes stay durable.
                self._claim_direct = DirectConnection(db.engine.url, durable=False)
                self._finish_direct = DirectConnection(db.engine.url)
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._work_loop, name=f"task-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        finisher = threading.Thread(target=self._finish_loop, name="task-finisher", daemon=True)
        finisher.start()
        self._finisher = finisher
        dispatcher = threading.Thread(target=self._dispatch_loop, name="task-dispatcher", daemon=True)
        dispatcher.start()
        self._threads.append(dispatcher)
        # Notifications go out on the notifier's own threads, never on the task workers.
        from .delivery import NotificationDispatcher

        self.notifier = NotificationDispatcher(self.app).start()
        dialect = self._dialect()
        if self.listen and dialect == "postgresql":
            listener = threading.Thread(target=self._listen_loop, name="task-wake-listener", daemon=True)
            listener.start()
        elif self.listen and dialect == "sqlite":
            watcher = threading.Thread(target=self._watch_sqlite_loop, name="task-wake-watcher", daemon=True)
            watcher.start()
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
        if self.app.config["ASYNC_TASK_RETENTION_DAYS"]:
            scheduler.add_job(self._purge_expired, "interval", hours=1, id="retention",
                              next_run_time=now)
        schedules = self.app.extensions.get("schedules")
        if schedules is not None:  # recurring schedules (webapp/schedules/runner.py): due slots -> tasks
            scheduler.add_job(schedules.tick, "interval", seconds=schedules.interval, id="schedules",
                              next_run_time=now)
        scheduler.start()
        self._scheduler = scheduler
        self.engine.local_consumers.append(self)
        self.started = True
        log.info("consumer %s started: concurrency=%s batch=%s poll=%ss", self.worker_id,
                 self.concurrency, self.batch_size, self.poll_interval)
        return self

    def stop(self, grace: float | None = None) -> list[int]:
        """Claim nothing new, let running tasks finish within ``grace``, release the rest."""
        if not self.started or self._stopping.is_set():
            return []
        grace = self.app.config["ASYNC_TASK_SHUTDOWN_GRACE"] if grace is None else grace
        self._stopping.set()
        self._wake.set()
        # A claim already in flight must land in the queue before the leftovers are counted,
        # or its tasks stay PROCESSING under a stopped worker until a sweep recovers them.
        for thread in self._threads:
            if thread.name == "task-dispatcher" and thread is not threading.current_thread():
                thread.join(timeout=10)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        notifier = getattr(self, "notifier", None)
        if notifier is not None:
            notifier.stop(grace=min(grace, 5.0))
        if self in self.engine.local_consumers:
            self.engine.local_consumers.remove(self)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                if self._inflight == 0 and self._unwritten == 0:
                    break
            time.sleep(0.05)
        for _ in self._threads:
            self._queue.put(None)
        with self._lock:
            self._finisher_closed = True  # late finishers (past the grace) write their own outcome
            self._finished.put(None)
        self._finisher.join(timeout=5)
        with self._lock:
            leftovers = list(self._running.values())
        while not self._queue.empty():  # claimed but never started
            item = self._queue.get_nowait()
            if item is not None:
                leftovers.append(item)
        released: list[int] = []
        with self.app.app_context():
            service = AsyncTaskService()
            if leftovers:
                released = service.release_tasks(leftovers, self.worker_id,
                                                 reason="worker shut down before the task finished")
                log.warning("released %d task(s) on shutdown: %s", len(released), released)
            self._release_locks(leftovers)
            service.stop_worker(self.worker_id)
            db.session.remove()
        for direct in (self._claim_direct, self._finish_direct):
            if direct is not None:
                direct.close()
        self.started = False
        log.info("consumer %s stopped", self.worker_id)
        return released

    def wake(self) -> None:
        """Ask the dispatcher to claim now (cheap; safe from any thread)."""
        self._wake.set()

    @property
    def busy(self) -> int:
        with self._lock:
            return self._inflight

    # -- dispatching -------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=self.poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                self._claim_while_free()
            except Exception:
                log.exception("claim failed; retrying at the next poll")
                time.sleep(min(1.0, self.poll_interval))

    def _claim_while_free(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                free = self.concurrency + self.prefetch - self._inflight
            if free <= 0:
                self._last_claim_full = True
                return
            wanted = min(self.batch_size, free)
            with self.app.app_context():
                try:
                    claimed = AsyncTaskService().claim_due_tasks(self.worker_id, wanted, self.task_types,
                                                                 direct=self._claim_direct)
                finally:
                    db.session.remove()
            with self._lock:  # owned from the moment the claim returns (see _release_forgotten_attempts)
                self._owned.update((task.id, task.claim_token) for task in claimed)
            kept = self._lock_in_redis(claimed)
            with self._lock:
                self._owned.difference_update((t.id, t.claim_token) for t in claimed if t not in kept)
            claimed = kept
            with self._lock:
                self._inflight += len(claimed)
                for task in claimed:
                    self._running[task.id] = task
                self._last_claim_full = len(claimed) >= wanted
            for task in claimed:
                self._queue.put(task)
            if len(claimed) < wanted:
                return

    def _lock_in_redis(self, claimed: list[TaskInfo]) -> list[TaskInfo]:
        if self.locks is None or not claimed:
            return claimed
        try:
            held = self.locks.acquire_many((t.id, t.claim_token) for t in claimed)
        except RedisUnavailable as exc:
            self._redis_down(exc)
            return claimed
        self._redis_up()
        refused = [t for t in claimed if t.id not in held]
        if refused:
            # Someone still holds the Redis lock (a stale attempt not yet recovered): give back.
            log.warning("Redis lock held elsewhere for task(s) %s; releasing the claim",
                        [t.id for t in refused])
            with self.app.app_context():
                AsyncTaskService().release_tasks(refused, self.worker_id,
                                                 reason="Redis lock held by another worker")
                db.session.remove()
        return [t for t in claimed if t.id in held]

    # -- running tasks -----------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            try:
                with task_log_context(task):  # every log line of the attempt names the task
                    self._run(task)
            except Exception:
                log.exception("task %s: unexpected error in the worker thread", task.id)
            finally:
                with self._lock:
                    self._inflight -= 1
                    self._running.pop(task.id, None)
                    drain = self._last_claim_full
                if drain:
                    self.wake()

    def _run(self, task: TaskInfo) -> None:
        with self.app.app_context():
            service = AsyncTaskService()
            try:
                result, trace = self._execute(service, task)
                if not db.session().in_transaction():
                    # The processor did no database work: nothing needs its transaction, so the
                    # outcome joins the finisher's next batch and this thread takes the next task.
                    with self._lock:
                        batched = not self._finisher_closed
                        if batched:
                            self._unwritten += 1
                            self._finished.put(FinishedAttempt(task, result, trace))
                    if batched:
                        return
                try:
                    outcome = service.finish_task(task, result, worker_id=self.worker_id, traceback=trace)
                except Exception as exc:
                    # Committing the processor's own writes failed (constraint, lost connection):
                    # the attempt fails as a whole and nothing of it is kept.
                    db.session.rollback()
                    log.exception("task %s: finishing failed", task.id)
                    outcome = service.finish_task(
                        task, TaskResult.failure(f"could not commit the result: {type(exc).__name__}: {exc}"),
                        worker_id=self.worker_id, traceback=tb_module.format_exc())
            finally:
                db.session.remove()
        self._after_finish([task], [outcome])

    def _after_finish(self, tasks: list[TaskInfo], outcomes: list[FinishOutcome]) -> None:
        with self._lock:  # finished: the heartbeat must stop extending the locks released next
            for task in tasks:
                self._running.pop(task.id, None)
                self._owned.discard((task.id, task.claim_token))
        self._release_locks(tasks)
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
            while len(batch) < 500:
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

    def _write_batch(self, batch: list[FinishedAttempt]) -> list[FinishOutcome]:
        with self.app.app_context():
            try:
                return AsyncTaskService().finish_many(batch, worker_id=self.worker_id,
                                                      direct=self._finish_direct)
            except Exception:
                db.session.rollback()
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
        context = TaskContext(self.app, task)
        enter_context(context)
        try:
            payload: Any = task.payload
            if processor.payload_type is not None:
                payload = payload_from_json(processor.payload_type, task.payload)
            result = processor.process(task, payload)
        except TaskCancelled:
            db.session.rollback()  # a cancelled attempt keeps none of its writes
            log.info("task %s (%s) attempt %s cancelled on request", task.id, task.task_type, task.attempt)
            return TaskResult.cancelled(), None
        except Exception as exc:
            db.session.rollback()  # the processor's own writes go with its failed attempt
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
            db.session.rollback()
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
                                                     self.concurrency, self.heartbeat_interval)
                self._release_forgotten_attempts()
            except Exception:
                log.exception("heartbeat failed")
            finally:
                db.session.remove()
        if self.locks is not None:
            with self._lock:
                running = [(t.id, t.claim_token) for t in self._running.values()]
            try:
                lost = self.locks.extend_many(running)
                with self._lock:  # a task that finished meanwhile released its lock; not lost
                    lost = {task_id for task_id in lost if task_id in self._running}
                if lost:
                    log.warning("Redis lock missing for running task(s) %s (expired or deleted); "
                                "the database lease still protects them", sorted(lost))
                # With nothing to extend no round trip was made: ask Redis before calling it back,
                # or an idle worker would flap between "unavailable" and "reachable again".
                if not running and not self.locks.ping():
                    raise RedisUnavailable("Redis did not answer PING")
                self._redis_up()
            except RedisUnavailable as exc:
                self._redis_down(exc)

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
                if self.locks is None:
                    self._sweep()
                else:
                    self._sweep_under_redis_lock(self.locks)
            except Exception:
                log.exception("recovery sweep failed")
            finally:
                db.session.remove()

    def _sweep_under_redis_lock(self, locks: TaskLocks) -> None:
        """Sweep while holding the sweep lock; without Redis, sweep anyway (it is conditional)."""
        swept = False
        try:
            # TTL below the 3-beat stale threshold: a sweeper killed while holding it must not
            # delay the recovery of its own tasks (overlapping sweeps are harmless, every
            # recovery is a conditional update).
            with locks.sweep_lock(ttl_seconds=self.heartbeat_interval * 2) as mine:
                if mine:
                    self._sweep()
                    swept = True
        except RedisUnavailable as exc:
            self._redis_down(exc)
            if not swept:
                self._sweep()
        else:
            # Every round trip of the block was answered (taking and releasing the lock).
            self._redis_up()

    def _purge_expired(self) -> None:
        """Retention: drop finished tasks older than ASYNC_TASK_RETENTION_DAYS (hourly)."""
        days = self.app.config["ASYNC_TASK_RETENTION_DAYS"]
        with self.app.app_context():
            try:
                cutoff = datetime.now(UTC) - timedelta(days=days)
                deleted = AsyncTaskService().purge_finished(cutoff)
                if deleted:
                    log.info("retention: purged %d task(s) finished before %s", deleted, cutoff.isoformat())
            except Exception:
                log.exception("retention purge failed")
            finally:
                db.session.remove()

    def _sweep(self) -> list[int]:
        return AsyncTaskService().recover_orphans(self.max_processing_time, self.heartbeat_interval,
                                                  before_commit=self._drop_locks_of)

    def _drop_locks_of(self, task_ids: list[int]) -> None:
        """Free recovered tasks' Redis locks before the recovery commits and wakes claimers."""
        if self.locks is None:
            return
        try:
            self.locks.force_release(task_ids)
        except RedisUnavailable as exc:
            self._redis_down(exc)

    def _release_locks(self, tasks: list[TaskInfo]) -> None:
        if self.locks is None or not tasks:
            return
        try:
            self.locks.release_many((t.id, t.claim_token) for t in tasks)
        except RedisUnavailable as exc:
            self._redis_down(exc)

    def _redis_down(self, exc: Exception) -> None:
        if self.redis_ok:
            log.error("REDIS UNAVAILABLE: %s. Continuing on database claims alone.", exc)
        self.redis_ok = False
        self.engine.redis_ok = False

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.warning("Redis is reachable again; per-task locks resumed")
        self.redis_ok = True
        self.engine.redis_ok = True

    # -- cross-process wake-up ---------------------------------------------------------------

    def _dialect(self) -> str:
        with self.app.app_context():
            return str(db.engine.dialect.name)

    def _watch_sqlite_loop(self) -> None:
        """SQLite has no NOTIFY: wake when another connection commits (``PRAGMA data_version``).

        Reading the counter is a local call of a few microseconds, so checking it every 20 ms
        gives other processes' submits a pickup latency close to PostgreSQL's NOTIFY, while an
        idle database costs nothing else: the claim itself first checks, read-only, that
        something is due before it takes the write lock.
        """
        import sqlite3

        with self.app.app_context():
            path = db.engine.url.database
        if not path or path == ":memory:":
            return
        try:
            connection = sqlite3.connect(path, timeout=1, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("cannot watch %s for new work (%s); polling only", path, exc)
            return
        last = None
        with connection:
            while not self._stopping.wait(0.02):
                try:
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    continue
                if last is not None and version != last:
                    self.wake()
                last = version
        connection.close()

    def _listen_loop(self) -> None:
        """LISTEN for submits committed by other processes; each NOTIFY wakes the dispatcher."""
        import psycopg

        # LISTEN needs a session of its own: behind PgBouncer in transaction mode, point
        # ASYNC_TASK_LISTEN_DATABASE_URL straight at PostgreSQL (docs/deploy.md).
        direct = self.app.config.get("ASYNC_TASK_LISTEN_DATABASE_URL")
        with self.app.app_context():
            engine_url = make_url(direct) if direct else db.engine.url
            engine_url = engine_url.difference_update_query(["prepare_threshold"])  # not a libpq key
            url = engine_url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stopping.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    while not self._stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake()
            except Exception as exc:
                if not self._stopping.is_set():
                    log.warning("wake-up listener lost its connection (%s); reconnecting", exc)
                    self._stopping.wait(1.0)
