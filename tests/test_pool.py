"""The claim pool both the task consumer and the notification dispatcher are built on (tasks/pool.py).

A pool over an in-memory queue of numbers, so what is checked is the pool alone: it claims
while threads are free, never holds more than threads + prefetch, drains without waiting for
the poll, wakes on request, and stops gracefully, handing back what it claimed but never started.
"""

from __future__ import annotations

import threading
import time

from tests.conftest import wait_until
from webapp.tasks.pool import ClaimPool

LONG_POLL = 30.0  # far longer than any test waits: only wake-ups and drains move work


class NumberPool(ClaimPool[int]):
    """Claims numbers from a list; running one records it and waits for ``release``."""

    def __init__(self, numbers: list[int], *, concurrency: int = 2, batch_size: int = 3, prefetch: int = 0,
                 blocking: bool = False) -> None:
        super().__init__(name="number pool", concurrency=concurrency, batch_size=batch_size,
                         poll_interval=LONG_POLL, prefetch=prefetch)
        self.waiting = list(numbers)
        self.ran: list[int] = []
        self.started: list[int] = []
        self.claims: list[int] = []
        self.peak_in_flight = 0
        self.release = threading.Event()
        if not blocking:
            self.release.set()
        self._list_lock = threading.Lock()

    def claim(self, wanted: int) -> list[int]:
        with self._list_lock:
            taken, self.waiting = self.waiting[:wanted], self.waiting[wanted:]
        self.claims.append(len(taken))
        with self._lock:
            self.peak_in_flight = max(self.peak_in_flight, self._inflight + len(taken))
        return taken

    def run_item(self, item: int) -> None:
        with self._list_lock:
            self.started.append(item)
        self.release.wait(timeout=10)
        with self._list_lock:
            self.ran.append(item)

    def add(self, numbers: list[int]) -> None:
        with self._list_lock:
            self.waiting.extend(numbers)


def test_drains_a_queue_without_waiting_for_the_poll():
    pool = NumberPool(list(range(50)))
    pool.start_threads("n-worker", "n-claimer")
    try:
        wait_until(lambda: len(pool.ran) == 50, timeout=5, message="all 50 run long before the poll")
        assert sorted(pool.ran) == list(range(50))
        assert pool.busy == 0
    finally:
        pool.stop_claiming()
        pool.end_workers(time.monotonic() + 2)


def test_never_holds_more_than_threads_plus_prefetch():
    pool = NumberPool(list(range(40)), concurrency=2, batch_size=10, prefetch=3)
    pool.start_threads("n-worker", "n-claimer")
    try:
        wait_until(lambda: len(pool.ran) == 40, timeout=5, message="all run")
        assert pool.peak_in_flight <= 2 + 3
        assert max(pool.claims) <= 5
    finally:
        pool.stop_claiming()
        pool.end_workers(time.monotonic() + 2)


def test_an_idle_pool_claims_when_woken():
    pool = NumberPool([])
    pool.start_threads("n-worker", "n-claimer")
    try:
        wait_until(lambda: pool.claims == [0], timeout=5, message="the first, empty claim")
        pool.add([7, 8])
        time.sleep(0.2)
        assert pool.ran == []  # nobody asked: the next poll is 30 s away
        pool.wake()
        wait_until(lambda: sorted(pool.ran) == [7, 8], timeout=5, message="woken")
    finally:
        pool.stop_claiming()
        pool.end_workers(time.monotonic() + 2)


def test_graceful_stop_hands_back_what_never_started():
    pool = NumberPool(list(range(10)), concurrency=2, batch_size=10, prefetch=4, blocking=True)
    pool.start_threads("n-worker", "n-claimer")
    wait_until(lambda: pool.busy == 6 and len(pool.started) == 2, timeout=5,
               message="two running, four waiting for a thread")
    pool.stop_claiming()
    unstarted = pool.take_unstarted()
    assert len(unstarted) == 4 and pool.busy == 2
    assert not pool.wait_until_idle(time.monotonic() + 0.2)  # two still running
    pool.release.set()
    assert pool.wait_until_idle(time.monotonic() + 5)
    assert pool.end_workers(time.monotonic() + 2) == []
    assert sorted(pool.ran + unstarted) == list(range(6))
    assert pool.waiting == list(range(6, 10))  # nothing claimed after the stop


def test_a_failing_claim_waits_as_the_pool_says_and_then_claims_again():
    class FlakyClaims(NumberPool):
        failures = 1

        def claim(self, wanted: int) -> list[int]:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("database gone")
            return super().claim(wanted)

        def claim_failed(self, exc: Exception) -> float:
            return 0.0  # e.g. a lost connection: reconnect at once

    pool = FlakyClaims([1, 2, 3])
    pool.start_threads("n-worker", "n-claimer")
    try:
        wait_until(lambda: sorted(pool.ran) == [1, 2, 3], timeout=5, message="claimed after the failure")
    finally:
        pool.stop_claiming()
        pool.end_workers(time.monotonic() + 2)
