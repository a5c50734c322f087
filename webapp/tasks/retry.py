"""Retry delays: the one place the backoff formula lives."""

from __future__ import annotations

import random

from .processor import RetryStrategy


def next_retry_delay(
    attempt_number: int,
    strategy: RetryStrategy | str,
    base_interval: float,
    max_delay: float | None = None,
    jitter: float = 0.0,
) -> float:
    """Seconds to wait before the ``attempt_number``-th automatic retry (1-based).

    FIXED: ``base``. EXPONENTIAL: ``base * 2 ** (n - 1)``, so 60, 120, 240 for a base of 60.
    ``max_delay`` caps the result; ``jitter`` adds up to that fraction of it at random
    (both off by default, so delays are exactly as configured).
    """
    if attempt_number < 1:
        raise ValueError("attempt_number starts at 1")
    if RetryStrategy(strategy) is RetryStrategy.FIXED:
        delay = float(base_interval)
    else:
        delay = float(base_interval) * 2 ** (attempt_number - 1)
    if max_delay is not None:
        delay = min(delay, float(max_delay))
    if jitter:
        delay += delay * jitter * random.random()
    return delay
