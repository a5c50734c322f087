"""Retry delays: the formula of RetryConfig / next_retry_delay."""

import pytest

from webapp.tasks import RetryConfig, RetryStrategy
from webapp.tasks.retry import next_retry_delay


def test_exponential_doubles_from_the_base():
    assert [next_retry_delay(n, RetryStrategy.EXPONENTIAL, 60) for n in (1, 2, 3)] == [60, 120, 240]


def test_fixed_is_constant():
    assert [next_retry_delay(n, "FIXED", 60) for n in (1, 2, 3)] == [60, 60, 60]


def test_cap_limits_the_delay():
    assert next_retry_delay(10, RetryStrategy.EXPONENTIAL, 60, max_delay=300) == 300


def test_jitter_stays_within_its_fraction():
    delays = {next_retry_delay(1, RetryStrategy.FIXED, 100, jitter=0.5) for _ in range(50)}
    assert all(100 <= d <= 150 for d in delays)
    assert len(delays) > 1


def test_attempt_numbers_start_at_one():
    with pytest.raises(ValueError):
        next_retry_delay(0, RetryStrategy.FIXED, 60)


@pytest.mark.parametrize("kwargs", [
    {"max_retry_count": -1},
    {"max_retry_count": 1.5},
    {"max_retry_count": True},
    {"base_interval": -1},
    {"strategy": "LINEAR"},
    {"jitter": 2},
])
def test_retry_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        RetryConfig(**kwargs)
