"""Flow control as a processor declares it: ``TaskLimits``, ``RateLimit``, ``Unique``, checked at start-up.

A processor's ``get_limits()`` returns a ``TaskLimits``; the registry checks it when the processor
is registered, so a zero limit, a key that is not a payload field or a soft limit above the hard
one stops the app at start-up naming the task type and the field. The claim enforces
``concurrency`` and ``rate`` in the database (``dialect_*.claim_limited``); ``ClaimLimit`` is the
flat form those statements take.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from .errors import RegistryError

ISOLATIONS = ("thread", "process")
UNIQUE_STATUSES = ("PENDING", "RETRYING", "PROCESSING", "SUCCESS", "FAILURE", "CANCELLED")
# A key names one top-level payload field; the claim reads it with ``->>`` / ``json_extract``.
KEY_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_seconds(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0 and value < 10**9


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` starts in any window of ``per_seconds``, across every worker."""

    count: int
    per_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not _is_count(self.count):
            raise ValueError(f"rate.count must be a whole number of 1 or more, got {self.count!r}")
        if not _is_seconds(self.per_seconds):
            raise ValueError(f"rate.per_seconds must be a number of seconds above 0, got {self.per_seconds!r}")


@dataclass(frozen=True)
class Unique:
    """A submit matching ``fields`` of a task in ``statuses`` created within ``window_seconds`` returns it."""

    fields: tuple[str, ...] = ()
    window_seconds: float = 3600.0
    statuses: tuple[str, ...] = ("PENDING", "RETRYING", "PROCESSING")

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "statuses", tuple(self.statuses))
        for name in self.fields:
            if not isinstance(name, str) or not KEY_FIELD.match(name):
                raise ValueError(f"unique.fields: {name!r} is not a payload field name")
        if not _is_seconds(self.window_seconds):
            raise ValueError(f"unique.window_seconds must be a number of seconds above 0, got {self.window_seconds!r}")
        if not self.statuses:
            raise ValueError("unique.statuses must name at least one status")
        for status in self.statuses:
            if status not in UNIQUE_STATUSES:
                raise ValueError(f"unique.statuses: unknown status {status!r}")


@dataclass(frozen=True)
class TaskLimits:
    """What a task type may use: concurrency and rate (per key), uniqueness, time limits, isolation.

    ``concurrency``: at most that many PROCESSING at once per value of the payload field
    ``concurrency_key`` (or for the whole type when None). ``rate``: at most ``rate.count``
    starts per ``rate.per_seconds`` per value of ``rate_key``. Both hold across every worker and
    machine because the claim statement enforces them. ``time_limit`` / ``soft_time_limit`` are
    seconds; ``isolation`` is ``"thread"`` or ``"process"``.
    """

    concurrency: int | None = None
    concurrency_key: str | None = None
    rate: RateLimit | None = None
    rate_key: str | None = None
    unique: Unique | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    isolation: str = "thread"

    def __post_init__(self) -> None:
        if self.concurrency is not None and not _is_count(self.concurrency):
            raise ValueError(f"concurrency must be a whole number of 1 or more, got {self.concurrency!r}")
        if self.rate is not None and not isinstance(self.rate, RateLimit):
            raise ValueError(f"rate must be a RateLimit, got {self.rate!r}")
        if self.unique is not None and not isinstance(self.unique, Unique):
            raise ValueError(f"unique must be a Unique, got {self.unique!r}")
        for name in ("concurrency_key", "rate_key"):
            key = getattr(self, name)
            if key is not None and (not isinstance(key, str) or not KEY_FIELD.match(key)):
                raise ValueError(f"{name} must be a payload field name, got {key!r}")
        if self.concurrency_key is not None and self.concurrency is None:
            raise ValueError("concurrency_key is set but concurrency is not")
        if self.rate_key is not None and self.rate is None:
            raise ValueError("rate_key is set but rate is not")
        for name in ("time_limit", "soft_time_limit"):
            value = getattr(self, name)
            if value is not None and not _is_seconds(value):
                raise ValueError(f"{name} must be a number of seconds above 0, got {value!r}")
        if (self.time_limit is not None and self.soft_time_limit is not None
                and self.soft_time_limit > self.time_limit):
            raise ValueError(f"soft_time_limit ({self.soft_time_limit}) is above time_limit ({self.time_limit})")
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}")

    @property
    def limits_claims(self) -> bool:
        """Whether the claim has to count anything for this type (concurrency or rate)."""
        return self.concurrency is not None or self.rate is not None


NO_LIMITS = TaskLimits()


def time_limit_message(seconds: float) -> str:
    """The error of an attempt stopped (or marked) at its hard time limit."""
    return f"time limit of {seconds:g} s exceeded"


@dataclass(frozen=True)
class ClaimLimit:
    """One limited task type as the claim statement takes it (None: that limit is off)."""

    task_type: str
    concurrency: int | None
    concurrency_key: str | None
    rate_count: int | None
    rate_per: float | None
    rate_key: str | None

    @classmethod
    def of(cls, task_type: str, limits: TaskLimits) -> ClaimLimit:
        """The claim's view of ``limits``."""
        return cls(task_type, limits.concurrency, limits.concurrency_key,
                   limits.rate.count if limits.rate else None,
                   float(limits.rate.per_seconds) if limits.rate else None, limits.rate_key)


def checked_limits(task_type: str, limits: Any, payload_type: type | None) -> TaskLimits:
    """``limits`` as returned by a processor, refused with a ``RegistryError`` naming type and field."""
    if limits is None:
        return NO_LIMITS
    if not isinstance(limits, TaskLimits):
        raise RegistryError(f"{task_type}: get_limits() must return a TaskLimits, got {limits!r}")
    fields = _payload_fields(payload_type)
    if fields is not None:
        keys = [("concurrency_key", limits.concurrency_key), ("rate_key", limits.rate_key)]
        keys += [("unique.fields", name) for name in (limits.unique.fields if limits.unique else ())]
        for setting, key in keys:
            if key is not None and key not in fields:
                raise RegistryError(f"{task_type}: {setting} {key!r} is not a field of "
                                    f"{getattr(payload_type, '__name__', payload_type)}")
    return limits


def _payload_fields(payload_type: type | None) -> set[str] | None:
    """The field names of a dataclass payload type; None when they cannot be known."""
    if payload_type is not None and dataclasses.is_dataclass(payload_type):
        return {f.name for f in dataclasses.fields(payload_type)}
    model_fields = getattr(payload_type, "model_fields", None)  # pydantic-style types
    return set(model_fields) if isinstance(model_fields, dict) else None
