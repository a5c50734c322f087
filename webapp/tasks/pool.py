"""The claim pool both the task consumer and the notification dispatcher are built on.

One **claim thread** takes work in batches of ``min(batch_size, free threads + prefetch)``
whenever it is woken (``wake()``: a poll timer, a commit in this process, a database
notification) and hands it to ``concurrency`` **worker threads**, each running one item at a
time. The in-flight count (claimed and not yet done) is what decides how much to claim, so a
pool never holds more than it can run. When a worker finishes while the last claim came back
full, it wakes the claim thread at once: a queue drains without waiting for the next poll.

An optional **side lane** runs items without a thread each (the consumer's event loop for
``async def`` processors, ``async_runner.py``): a subclass that sets ``side_capacity`` is asked
for side items (``claim_side``) against that capacity, not against free threads, and starts them
itself (``start_side``), calling ``side_done`` when each ends. The two lanes are claimed
separately, each only when due (woken from outside, or its last claim came back full), so a
worker whose queue holds only one kind pays no empty claim of the other kind per round. A side
claim asks for every free side slot at once (not ``batch_size``): the lane runs all it holds at
the same time, so nothing it claims waits, and a drain of short items costs a claim per
hundred items instead of per ten.

Stopping is graceful: claim nothing new (a claim in flight still lands), hand back the items
claimed but not started, and give running items until a deadline.

Subclasses say how to claim (``claim``), how to run one item (``run_item``), and optionally how
long to wait after a partial claim (``next_claim_in``) and after a failed one (``claim_failed``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
CLAIM_THREAD_JOIN_TIMEOUT = 10.0


class ClaimPool(Generic[Item]):
    """Claim-and-run threads; subclasses implement ``claim`` and ``run_item``."""

    def __init__(self, *, name: str, concurrency: int, batch_size: int, poll_interval: float,
                 prefetch: int = 0) -> None:
        self.pool_name = name
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        # Items claimed ahead of free threads, so short items never wait for a claim round trip.
        self.prefetch = prefetch
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified whenever the in-flight count drops
        self._inflight = 0  # both lanes
        self._last_claim_full = False
        # The side lane (see the module docstring); a lane is claimed only when it is due.
        self.side_capacity = 0
        self._side_inflight = 0
        self._side_last_full = False
        self._threads_due = True
        self._side_due = True
        self._claimer: threading.Thread | None = None
        self._workers: list[threading.Thread] = []

    # -- what a pool does with its items ---------------------------------------------------

    def claim(self, wanted: int) -> list[Item]:
        """Claim up to ``wanted`` items (in the claim thread)."""
        raise NotImplementedError

    def run_item(self, item: Item) -> None:
        """Run one claimed item (in a worker thread); exceptions are logged, never fatal."""
        raise NotImplementedError

    def item_done(self, item: Item) -> None:
        """Called in the worker thread after ``run_item``, under the pool's lock."""

    def claim_side(self, wanted: int) -> list[Item]:
        """Claim up to ``wanted`` side-lane items (in the claim thread; only with ``side_capacity``)."""
        return []

    def start_side(self, items: list[Item]) -> None:
        """Start side-lane items without blocking; each must end with ``side_done(item, ...)``."""
        raise NotImplementedError

    def side_done(self, item: Item, *, finished: bool = True) -> None:
        """A side-lane item ended (any thread). ``finished=False``: abandoned on stop, not done."""
        with self._lock:
            self._inflight -= 1
            self._side_inflight -= 1
            if finished:
                self.item_done(item)
            drain = self._side_last_full
            self._idle.notify_all()
        if drain:
            self._side_due = True
            self._wake.set()

    def next_claim_in(self, claimed: int) -> float:
        """Seconds to wait after a claim that brought back fewer items than wanted."""
        return self.poll_interval

    def claim_failed(self, exc: Exception) -> float:
        """Log a failed claim; seconds to wait before the next one."""
        log.exception("%s: claim failed; retrying at the next poll", self.pool_name)
        return self.poll_interval

    # -- lifecycle ---------------------------------------------------------------------------

    def start_threads(self, worker_name: str, claimer_name: str) -> None:
        """Start the worker threads and the claim thread; the first claim runs at once."""
        self._stopping.clear()
        for index in range(self.concurrency):
            worker = threading.Thread(target=self._work_loop, name=f"{worker_name}-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._claimer = threading.Thread(target=self._claim_loop, name=claimer_name, daemon=True)
        self._claimer.start()

    def wake(self) -> None:
        """Ask the claim thread to claim now, in both lanes (cheap; safe from any thread)."""
        self._threads_due = self._side_due = True
        self._wake.set()

    @property
    def busy(self) -> int:
        """Items claimed and not yet done (running or waiting for a thread)."""
        with self._lock:
            return self._inflight

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop_claiming(self, timeout: float = CLAIM_THREAD_JOIN_TIMEOUT) -> None:
        """Claim nothing new; returns once a claim in flight has landed in the queue."""
        self._stopping.set()
        self._wake.set()
        claimer = self._claimer
        if claimer is not None and claimer is not threading.current_thread():
            claimer.join(timeout=timeout)

    def take_unstarted(self) -> list[Item]:
        """Remove the items claimed but not yet started; the caller gives them back."""
        unstarted: list[Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                unstarted.append(item)
        if unstarted:
            with self._lock:
                self._inflight -= len(unstarted)
                self._idle.notify_all()
        return unstarted

    def wait_until_idle(self, deadline: float) -> bool:
        """Wait (until the ``time.monotonic()`` deadline) for running items; True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._is_idle(), timeout=max(0.0, deadline - time.monotonic()))

    def _is_idle(self) -> bool:
        """Under the lock: nothing in flight (subclasses add their own pending work)."""
        return self._inflight == 0

    def end_workers(self, deadline: float) -> list[str]:
        """Let the worker threads exit; the names of those still busy at the deadline."""
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [worker.name for worker in self._workers if worker.is_alive()]
        self._workers = []
        return stuck

    # -- threads -----------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        wait = 0.0
        while not self._stopping.is_set():
            if not self._wake.wait(timeout=wait):
                self._threads_due = self._side_due = True  # a timed re-poll: both lanes
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                wait = self._claim_while_free()
            except Exception as exc:
                self._threads_due = self._side_due = True  # the retry claims both lanes again
                wait = self.claim_failed(exc)

    def _claim_while_free(self) -> float:
        """Claim until both lanes are full or their claims come back short.

        A lane's due flag is cleared before its claim and set again only by a full claim or a
        wake-up, so a wake-up arriving during a claim is never lost.
        """
        wait = 0.0
        while not self._stopping.is_set():
            with self._lock:
                free = self.concurrency + self.prefetch - (self._inflight - self._side_inflight)
                side_free = self.side_capacity - self._side_inflight
                if free <= 0:
                    self._last_claim_full = True
                if self.side_capacity and side_free <= 0:
                    self._side_last_full = True
            claim_threads = free > 0 and self._threads_due
            claim_side = side_free > 0 and self._side_due
            if not claim_threads and not claim_side:
                return wait or self.poll_interval
            wait = self.poll_interval
            if claim_threads:
                self._threads_due = False
                wanted = min(self.batch_size, free)
                claimed = self.claim(wanted)
                with self._lock:
                    self._inflight += len(claimed)
                    self._last_claim_full = len(claimed) >= wanted
                for item in claimed:
                    self._queue.put(item)
                if len(claimed) >= wanted:
                    self._threads_due = True
                else:
                    wait = self.next_claim_in(len(claimed))
            if claim_side:
                self._side_due = False
                wanted = side_free
                started = self.claim_side(wanted)
                with self._lock:
                    self._inflight += len(started)
                    self._side_inflight += len(started)
                    self._side_last_full = len(started) >= wanted
                if started:
                    self.start_side(started)
                if len(started) >= wanted:
                    self._side_due = True
                else:
                    wait = min(wait, self.next_claim_in(len(started)))
        return 0.0

    def _work_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.run_item(item)
            except Exception:
                log.exception("%s: unexpected error in a worker thread", self.pool_name)
            finally:
                with self._lock:
                    self._inflight -= 1
                    self.item_done(item)
                    drain = self._last_claim_full
                    self._idle.notify_all()
                if drain:  # the thread lane only: a side claim has its own drain wake-up
                    self._threads_due = True
                    self._wake.set()
