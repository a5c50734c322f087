"""The job function the RQ drain benchmark queues (importable by the worker by name)."""

from __future__ import annotations

import time

STATE = {"first": 0.0, "count": 0}


def noop() -> None:
    """Does nothing; remembers when the first job started and how many ran."""
    if not STATE["count"]:
        STATE["first"] = time.time()
    STATE["count"] += 1
