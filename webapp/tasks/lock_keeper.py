"""A consumer's Redis side: per-task locks for what it claims, and whether Redis is answering.

The database claim alone guarantees one owner per attempt; the Redis lock is a second line
(``locks.py``). Every Redis call can fail with ``RedisUnavailable``: the consumer then carries
on with database claims alone, logs ``REDIS UNAVAILABLE`` once, shows it on the console, and
calls Redis back only after a round trip Redis answered (a failed call in between must not
pass for one that worked).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from flask import Flask

from ..extensions import db
from .locks import RedisUnavailable, TaskLocks
from .processor import TaskInfo
from .service import AsyncTaskService

log = logging.getLogger(__name__)

SHORTEST_BACK_OFF = 0.1  # seconds: a lock about to expire still sends its task back briefly


class TaskLockKeeper:
    """Takes, extends and releases a consumer's task locks; tracks whether Redis is up."""

    def __init__(self, app: Flask, locks: TaskLocks | None, worker_id: str) -> None:
        self.app = app
        self.locks = locks
        self.worker_id = worker_id
        self.engine = app.extensions["async_task"]
        self.redis_ok = True

    # -- claims --------------------------------------------------------------------------------

    def lock_claimed(self, claimed: list[TaskInfo]) -> list[TaskInfo]:
        """Take the lock of each claimed task; the tasks this consumer may run.

        Without Redis (not configured, or not answering) every claim stands: the database
        lease is what guarantees one owner.
        """
        if self.locks is None or not claimed:
            return claimed
        try:
            held = self.locks.acquire_many((t.id, t.claim_token) for t in claimed)
            refused = [t for t in claimed if t.id not in held]
            if refused:
                held |= self._take_over_or_give_back(self.locks, refused)
        except RedisUnavailable as exc:
            self.down(exc)
            return claimed
        self.up()
        return [t for t in claimed if t.id in held]

    def _take_over_or_give_back(self, locks: TaskLocks, refused: list[TaskInfo]) -> set[int]:
        """Locks still held when their task was claimed: the ids whose lock is now ours.

        A lock left by a finished attempt of the same task (its worker stopped between the
        outcome's commit and the release) is taken over. Any other holder keeps it: the task is
        given back, due again when the lock expires, and the claim is not counted as an
        attempt; giving it back due at once would only start a claim-and-give-back storm.
        """
        holders = locks.holders(t.id for t in refused)
        # A lock that expired between the refusal and the look is taken the ordinary way.
        taken = locks.acquire_many((t.id, t.claim_token) for t in refused if holders[t.id][0] is None)
        with self.app.app_context():
            try:
                service = AsyncTaskService()
                finished = service.lock_holders_done((t.id, t.attempt - 1, str(holders[t.id][0]))
                                                     for t in refused if holders[t.id][0] is not None)
                taken_over = {t.id for t in refused if t.id in finished
                              and locks.take_over(t.id, str(holders[t.id][0]), t.claim_token)}
                if taken_over:
                    log.warning("took over the Redis lock of task(s) %s from their finished previous attempt",
                                sorted(taken_over))
                taken |= taken_over
                for task in refused:
                    if task.id not in taken:
                        holder, seconds_left = holders[task.id]
                        wait = max(SHORTEST_BACK_OFF, seconds_left)
                        log.warning("task %s: Redis lock held by %s for %.1fs more; giving it back until then",
                                    task.id, holder, wait)
                        service.release_tasks([task], self.worker_id, reason="Redis lock held by another worker",
                                              due_in=wait, count_attempt=False)
            finally:
                db.session.remove()
        return taken

    # -- while running, and after ------------------------------------------------------------

    def extend(self, running: list[tuple[int, str]], still_running: Callable[[set[int]], set[int]]) -> None:
        """Push back the expiry of the running tasks' locks (each heartbeat).

        ``still_running`` narrows the ids whose lock was missing to those still running (a
        task that finished meanwhile released its lock: not lost).
        """
        if self.locks is None:
            return
        try:
            lost = still_running(self.locks.extend_many(running))
            if lost:
                log.warning("Redis lock missing for running task(s) %s (expired or deleted); "
                            "the database lease still protects them", sorted(lost))
            # With nothing to extend no round trip was made: ask Redis before calling it back,
            # or an idle worker would flap between "unavailable" and "reachable again".
            if not running and not self.locks.ping():
                raise RedisUnavailable("Redis did not answer PING")
            self.up()
        except RedisUnavailable as exc:
            self.down(exc)

    def release(self, tasks: Iterable[TaskInfo]) -> None:
        """Release the locks of these attempts (compare-and-delete: only if still theirs)."""
        tasks = list(tasks)
        if self.locks is None or not tasks:
            return
        try:
            self.locks.release_many((t.id, t.claim_token) for t in tasks)
        except RedisUnavailable as exc:
            self.down(exc)

    def drop(self, task_ids: list[int]) -> None:
        """Free recovered tasks' locks (before the recovery commits and wakes claimers)."""
        if self.locks is None:
            return
        try:
            self.locks.force_release(task_ids)
        except RedisUnavailable as exc:
            self.down(exc)

    # -- the recovery sweep ------------------------------------------------------------------

    def sweep_under_lock(self, sweep: Callable[[], object], ttl_seconds: float) -> None:
        """Run ``sweep`` while holding the sweep lock; without Redis, sweep anyway (it is conditional)."""
        if self.locks is None:
            sweep()
            return
        swept = False
        try:
            with self.locks.sweep_lock(ttl_seconds=ttl_seconds) as mine:
                if mine:
                    sweep()
                    swept = True
        except RedisUnavailable as exc:
            self.down(exc)
            if not swept:
                sweep()
        else:
            # Every round trip of the block was answered (taking and releasing the lock).
            self.up()

    # -- Redis health ------------------------------------------------------------------------

    def down(self, exc: Exception) -> None:
        """Redis failed a call: say so once, and show it on the console."""
        if self.redis_ok:
            log.error("REDIS UNAVAILABLE: %s. Continuing on database claims alone.", exc)
        self.redis_ok = False
        self.engine.redis_ok = False

    def up(self) -> None:
        """Redis answered a round trip: locks resume."""
        if not self.redis_ok:
            log.warning("Redis is reachable again; per-task locks resumed")
        self.redis_ok = True
        self.engine.redis_ok = True
