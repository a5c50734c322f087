"""Redis locks: one per running task (token + TTL, compare-and-delete) and one for the sweep.

The database claim alone already guarantees one owner per attempt; the Redis lock is the
seed's second line against duplicate processing across instances. Every call raises
``RedisUnavailable`` when Redis cannot be reached, and the consumer carries on on database
claims alone, logging loudly.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

# KEYS[1] = lock key, ARGV[1] = token: delete only if we still hold it.
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# KEYS[1] = lock key, ARGV[1] = token, ARGV[2] = ttl ms: extend only if we still hold it.
EXTEND_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS[1] = lock key, ARGV[1] = the holder's value, ARGV[2] = ours, ARGV[3] = ttl ms: take over
# only from that holder (not from whoever took the lock since we looked).
TAKE_OVER_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 0
"""


class RedisUnavailable(RuntimeError):
    """Redis could not be reached or answered with an error."""


class TaskLocks:
    """Per-task Redis locks, taken and released in pipelined batches."""

    def __init__(self, url: str, prefix: str = "asynctask:", ttl_seconds: float = 15.0) -> None:
        # Imported here, not at the top: redis (with its asyncio and observability parts) costs
        # every process a large share of its start, and only one with REDIS_URL set gets here.
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self._errors: type[redis.RedisError] = redis.RedisError
        self.prefix = prefix
        self.ttl_ms = max(1000, int(ttl_seconds * 1000))
        self._release = self.client.register_script(RELEASE_SCRIPT)
        self._extend = self.client.register_script(EXTEND_SCRIPT)
        self._take_over = self.client.register_script(TAKE_OVER_SCRIPT)

    def key(self, task_id: int) -> str:
        return f"{self.prefix}lock:task:{task_id}"

    def acquire_many(self, claims: Iterable[tuple[int, str]]) -> set[int]:
        """Take the lock of each (task id, token); return the ids whose lock we now hold."""
        claims = list(claims)
        if not claims:
            return set()
        try:
            pipe = self.client.pipeline(transaction=False)
            for task_id, token in claims:
                pipe.set(self.key(task_id), token, nx=True, px=self.ttl_ms)
            answers = pipe.execute()
        except self._errors as exc:
            raise RedisUnavailable(str(exc)) from exc
        return {task_id for (task_id, _), ok in zip(claims, answers, strict=True) if ok}

    def release_many(self, claims: Iterable[tuple[int, str]]) -> None:
        claims = list(claims)
        if not claims:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for task_id, token in claims:
                self._release(keys=[self.key(task_id)], args=[token], client=pipe)
            pipe.execute()
        except self._errors as exc:
            raise RedisUnavailable(str(exc)) from exc

    def extend_many(self, claims: Iterable[tuple[int, str]]) -> set[int]:
        """Push back the expiry of locks we hold; return the ids whose lock was gone or taken."""
        claims = list(claims)
        if not claims:
            return set()
        try:
            pipe = self.client.pipeline(transaction=False)
            for task_id, token in claims:
                self._extend(keys=[self.key(task_id)], args=[token, self.ttl_ms], client=pipe)
            answers = pipe.execute()
        except self._errors as exc:
            raise RedisUnavailable(str(exc)) from exc
        return {task_id for (task_id, _), ok in zip(claims, answers, strict=True) if not ok}

    def holders(self, task_ids: Iterable[int]) -> dict[int, tuple[str | None, float]]:
        """Who holds each task's lock and for how much longer: {id: (value, seconds left)}."""
        task_ids = list(task_ids)
        if not task_ids:
            return {}
        try:
            pipe = self.client.pipeline(transaction=False)
            for task_id in task_ids:
                pipe.get(self.key(task_id))
                pipe.pttl(self.key(task_id))
            answers = pipe.execute()
        except self._errors as exc:
            raise RedisUnavailable(str(exc)) from exc
        held: dict[int, tuple[str | None, float]] = {}
        for index, task_id in enumerate(task_ids):
            value, ttl_ms = answers[2 * index], answers[2 * index + 1]
            held[task_id] = (value.decode() if isinstance(value, bytes) else value, max(0, ttl_ms) / 1000)
        return held

    def take_over(self, task_id: int, holder: str, token: str) -> bool:
        """Replace ``holder``'s lock by ours (``token``, full TTL); False if the lock changed hands."""
        try:
            return bool(self._take_over(keys=[self.key(task_id)], args=[holder, token, self.ttl_ms]))
        except self._errors as exc:
            raise RedisUnavailable(str(exc)) from exc

    def force_release(self, task_ids: Iterable[int]) -> None:
        """Drop locks of tasks the recovery sweep took away from a dead or overdue worker."""
        keys = [self.key(task_id) for task_id in task_ids]
        if not keys:
            return
        try:
            self.client.delete(*keys)
        except self._errors as exc:
            raise RedisUnavailable(str(exc)) from exc

    @contextmanager
    def sweep_lock(self, ttl_seconds: float) -> Iterator[bool]:
        """Hold the recovery-sweep lock while the block runs; yields False if another holds it.

        A release that Redis does not answer raises ``RedisUnavailable`` once the block is done
        (the lock then expires by itself): the caller must not take the block for proof that
        Redis is up.
        """
        key = f"{self.prefix}lock:recovery-sweep"
        token = uuid.uuid4().hex
        try:
            acquired = bool(self.client.set(key, token, nx=True, px=max(1000, int(ttl_seconds * 1000))))
        except self._errors as exc:
            raise RedisUnavailable(str(exc)) from exc
        release_failed: redis.RedisError | None = None
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    self._release(keys=[key], args=[token])
                except self._errors as exc:
                    log.warning("could not release the recovery-sweep lock; it expires by itself")
                    release_failed = exc
        if release_failed is not None:
            raise RedisUnavailable(f"could not release the recovery-sweep lock: {release_failed}")

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except self._errors:
            return False
