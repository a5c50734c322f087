"""Template filters: times, durations, pretty JSON, masked URL credentials. They return text; Jinja escapes it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask_babel import gettext

from ..tasks.models import TERMINAL_STATUSES, TaskStatus, utcnow

# scheme://userinfo@ — the userinfo (user, or user:password) of a URL anywhere in a text.
URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@]+@")


def mask_credentials(value: Any) -> Any:
    """``http://user:pass@host/`` shown as ``http://***@host/``, wherever in the text a URL is."""
    if not isinstance(value, str):
        return value
    return URL_CREDENTIALS.sub(r"\1***@", value)


def pretty_json(value: Any) -> str:
    """Indented JSON with sorted keys; non-ASCII kept readable."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def compact_json(value: Any) -> str:
    """One-line JSON, as text (Jinja escapes it like any other string)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str, separators=(", ", ": "))


def utc_time(value: datetime | None) -> str:
    """``2026-01-01 12:00:00 UTC`` (or an em dash for no time)."""
    if value is None:
        return "—"
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(value: timedelta | float | None) -> str:
    """A short human duration: ``850 ms``, ``42 s``, ``3 min 05 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if value is None:
        return "—"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 1:
        return sign + gettext("%(ms)s ms", ms=f"{seconds * 1000:.0f}")
    if seconds < 60:
        return sign + gettext("%(s)s s", s=f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}")
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return sign + gettext("%(min)s min %(s)s s", min=minutes, s=f"{secs:02d}")
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return sign + gettext("%(h)s h %(min)s min", h=hours, min=f"{minutes:02d}")
    days, hours = divmod(hours, 24)
    return sign + gettext("%(d)s d %(h)s h", d=days, h=hours)


def ago(value: datetime | None) -> str:
    """How long ago (``12 s ago``) or how far ahead (``in 3 min 00 s``) a time is."""
    if value is None:
        return "—"
    delta = utcnow() - value
    if delta.total_seconds() < 0:
        return gettext("in %(duration)s", duration=duration(-delta))
    return gettext("%(duration)s ago", duration=duration(delta))


def html_datetime(value: datetime | None) -> str:
    """A ``<time datetime>`` value: UTC with milliseconds at most (HTML allows three fraction
    digits; the API's microseconds are refused by validators)."""
    if value is None:
        return ""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def register(app: Flask) -> None:
    """Make the filters and a few constants available to every template."""
    app.jinja_env.filters["pretty_json"] = pretty_json
    app.jinja_env.filters["compact_json"] = compact_json
    app.jinja_env.filters["utc"] = utc_time
    app.jinja_env.filters["duration"] = duration
    app.jinja_env.filters["ago"] = ago
    app.jinja_env.filters["iso"] = html_datetime
    app.jinja_env.filters["mask_credentials"] = mask_credentials
    app.jinja_env.globals["ALL_STATUSES"] = [status.value for status in TaskStatus]
    app.jinja_env.globals["TERMINAL_STATUSES"] = TERMINAL_STATUSES
