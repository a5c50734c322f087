"""Shapes the pages draw: the throughput chart's geometry, a task's timeline and attempts."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask_babel import gettext, lazy_gettext

from ..tasks.models import AuditEntry, TaskEvent, TaskEventKind
from ..tasks.stats import Throughput
from .clock import clock_text

EVENT_LABELS = {
    TaskEventKind.SUBMITTED.value: lazy_gettext("Submitted"),
    TaskEventKind.CLAIMED.value: lazy_gettext("Claimed by a worker"),
    TaskEventKind.SUCCEEDED.value: lazy_gettext("Succeeded"),
    TaskEventKind.RETRY_SCHEDULED.value: lazy_gettext("Failed; retry scheduled"),
    TaskEventKind.FAILED.value: lazy_gettext("Failed"),
    TaskEventKind.CANCELLED.value: lazy_gettext("Cancelled"),
    TaskEventKind.RETRIED.value: lazy_gettext("Retried by an operator"),
    TaskEventKind.RECOVERED.value: lazy_gettext("Recovered (its worker died or it ran too long)"),
    TaskEventKind.RELEASED.value: lazy_gettext("Released (worker shut down)"),
    TaskEventKind.LATE_RESULT_REFUSED.value: lazy_gettext("Late result refused"),
    TaskEventKind.CANCEL_REQUESTED.value: lazy_gettext("Cancel requested by an operator"),
    TaskEventKind.CANCEL_TOO_LATE.value: lazy_gettext("Cancel request not honoured (the attempt ended anyway)"),
    TaskEventKind.RESUBMITTED.value: lazy_gettext("Edited and resubmitted as a new task"),
    TaskEventKind.UNBLOCKED.value: lazy_gettext("Unblocked (every task it waited for succeeded)"),
    TaskEventKind.SOFT_TIME_LIMIT.value: lazy_gettext("Soft time limit passed; asked to stop"),
    TaskEventKind.TIME_LIMIT_EXCEEDED.value: lazy_gettext("Over its hard time limit (a thread cannot be stopped)"),
}

# Events that end an attempt, and how the attempt ended.
ATTEMPT_ENDINGS = {
    TaskEventKind.SUCCEEDED.value,
    TaskEventKind.RETRY_SCHEDULED.value,
    TaskEventKind.FAILED.value,
    TaskEventKind.RECOVERED.value,
    TaskEventKind.RELEASED.value,
}


@dataclass(frozen=True)
class TimelineEntry:
    """One line of a task's timeline: a recorded event, or a refused operator action."""

    at: datetime
    kind: str
    label: str
    from_status: str | None = None
    to_status: str | None = None
    attempt: int | None = None
    worker_id: str | None = None
    actor: str | None = None
    message: str | None = None
    traceback: str | None = None

    @property
    def css_class(self) -> str:
        return "event-" + self.kind.lower().replace("_", "-").replace(".", "-")


def timeline(events: list[TaskEvent], audits: list[AuditEntry]) -> list[TimelineEntry]:
    """Events in order, with refused operator actions (from the audit log) merged in by time.

    Accepted operator actions already appear as events carrying the operator's name.
    """
    entries = [
        TimelineEntry(at=e.at, kind=e.kind, label=str(EVENT_LABELS.get(e.kind, e.kind.title())),
                      from_status=e.from_status, to_status=e.to_status, attempt=e.attempt,
                      worker_id=e.worker_id, actor=e.actor, message=e.message, traceback=e.traceback)
        for e in events
    ]
    for entry in audits:
        if entry.outcome == "ok":
            continue
        action = entry.action.removeprefix("task.")
        detail = entry.detail or {}
        status = detail.get("status")
        message = (gettext("%(action)s refused: task was %(status)s", action=action, status=status) if status
                   else gettext("%(action)s refused", action=action))
        entries.append(TimelineEntry(at=entry.at, kind=f"refused.{action}",
                                     label=gettext("Refused %(action)s", action=action),
                                     actor=entry.actor, message=message))
    entries.sort(key=lambda item: item.at)
    return entries


@dataclass(frozen=True)
class SearchMatch:
    """Where a task's search hit is: the field, and its text split around the matching part.

    The template writes ``before``, ``<mark>match</mark>`` and ``after`` as three escaped
    strings, so no user text is ever marked safe.
    """

    field: str
    before: str
    match: str
    after: str
    clipped_start: bool
    clipped_end: bool


SEARCH_CONTEXT = 40


class RawText(str):
    """Text shown as it is (the cut start of a payload's JSON), not dumped as a JSON string."""


def search_match(term: str | None, error: str | None, payload: Any) -> SearchMatch | None:
    """The first case-insensitive occurrence of ``term`` in the error, else in the payload's JSON.

    ``None`` when neither contains it (the task matched by id, or the database's text form of
    the payload differs from ours).
    """
    if not term:
        return None
    pattern = re.compile(re.escape(term), re.IGNORECASE)
    # A list row passes the start of the payload's JSON text (list_task_previews): a whole value
    # is shown as a dict would be (sorted keys); a cut one as the database wrote its start.
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            payload = RawText(payload)
    payload_text = payload if isinstance(payload, RawText) else (
        json.dumps(payload, ensure_ascii=False, sort_keys=True) if payload is not None else None)
    for name, text in (("error", error), ("payload", payload_text)):
        if not text:
            continue
        found = pattern.search(text)
        if found is None:
            continue
        start = max(0, found.start() - SEARCH_CONTEXT)
        end = min(len(text), found.end() + SEARCH_CONTEXT)
        return SearchMatch(name, text[start:found.start()], found.group(0), text[found.end():end],
                           start > 0, end < len(text))
    return None


def payload_fields(payload_type: Any) -> list[tuple[str, str, bool]]:
    """A dataclass payload type's fields as (name, type, required), for the edit form's hint."""
    if payload_type is None or not dataclasses.is_dataclass(payload_type):
        return []
    hints = typing.get_type_hints(payload_type)
    fields = []
    for spec in dataclasses.fields(payload_type):
        if not spec.init:
            continue
        annotation = hints.get(spec.name, Any)
        type_name = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        fields.append((spec.name, type_name, required))
    return fields


@dataclass
class Attempt:
    """One run of a task by a worker, from claim to outcome."""

    number: int
    worker_id: str | None
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str = "running"
    message: str | None = None
    traceback: str | None = None


def attempts(events: list[TaskEvent]) -> list[Attempt]:
    """The task's attempts, rebuilt from CLAIMED events and the event that ended each."""
    found: dict[int, Attempt] = {}
    for event in events:
        if event.kind == TaskEventKind.CLAIMED.value and event.attempt is not None:
            found[event.attempt] = Attempt(event.attempt, event.worker_id, event.at)
        elif event.kind in ATTEMPT_ENDINGS and event.attempt in found:
            _end(found[event.attempt], event)
        elif event.kind == TaskEventKind.CANCELLED.value:
            # A cancel ends whatever attempt is still open (a running task that stopped on request),
            # whether or not the event names the attempt: none stays "running" for ever.
            for attempt in found.values():
                _end(attempt, event)
    return [found[number] for number in sorted(found)]


def _end(attempt: Attempt, event: TaskEvent) -> None:
    if attempt.ended_at is None:
        attempt.ended_at = event.at
        attempt.outcome = str(EVENT_LABELS.get(event.kind, event.kind))
        attempt.message = event.message
        attempt.traceback = event.traceback


@dataclass(frozen=True)
class ChartBar:
    """One minute's stacked bar: successes at the bottom, failures on top."""

    x: float
    width: float
    success_y: float
    success_height: float
    failure_y: float
    failure_height: float
    title: str


@dataclass
class Chart:
    """An SVG bar chart of outcomes per minute, laid out on the server."""

    width: int
    height: int
    left: int
    top: int
    plot_width: float
    plot_height: float
    y_max: int
    bars: list[ChartBar] = field(default_factory=list)
    y_ticks: list[tuple[float, int]] = field(default_factory=list)
    x_labels: list[tuple[float, str, str]] = field(default_factory=list)  # x, text, text-anchor

    @property
    def bottom(self) -> float:
        return self.top + self.plot_height

    @property
    def right(self) -> float:
        return self.left + self.plot_width


def nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least ``value`` (and at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** int(math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def throughput_chart(data: Throughput, width: int = 1000, height: int = 200) -> Chart:
    """Lay out one stacked bar per minute, a y axis with three ticks and time labels."""
    left, top, bottom_margin, right_margin = 40, 10, 24, 8
    plot_width = width - left - right_margin
    plot_height = height - top - bottom_margin
    totals = [b.succeeded + b.failed for b in data.buckets]
    y_max = nice_ceiling(max(totals, default=0))
    chart = Chart(width, height, left, top, plot_width, plot_height, y_max)
    count = max(1, len(data.buckets))
    slot = plot_width / count
    scale = plot_height / y_max
    for index, bucket in enumerate(data.buckets):
        x = left + index * slot
        success_height = bucket.succeeded * scale
        failure_height = bucket.failed * scale
        success_y = top + plot_height - success_height
        title = gettext("%(time)s: %(succeeded)s finished, %(failed)s failed",
                        time=clock_text(bucket.start, seconds=False), succeeded=bucket.succeeded,
                        failed=bucket.failed)
        chart.bars.append(ChartBar(round(x + 1, 2), round(max(slot - 2, 1), 2), round(success_y, 2),
                                   round(success_height, 2), round(success_y - failure_height, 2),
                                   round(failure_height, 2), title))
    ticks = {0, y_max} | ({y_max // 2} if y_max % 2 == 0 else set())  # 5 gets no "2.5" line
    chart.y_ticks = [(round(top + plot_height - value * scale, 2), value) for value in sorted(ticks)]
    minutes = len(data.buckets)
    for minutes_ago in range(0, minutes, 15):
        index = minutes - 1 - minutes_ago
        if minutes_ago == 0:
            chart.x_labels.append((round(left + plot_width, 2), gettext("now"), "end"))
        else:
            chart.x_labels.append((round(left + (index + 0.5) * slot, 2), gettext("-%(minutes)s min", minutes=minutes_ago),
                                   "middle"))
    return chart


@dataclass(frozen=True)
class AuditRow:
    """An audit entry as the ``/audit`` page shows it."""

    id: int
    at: datetime
    actor: str | None
    action: str
    target_type: str | None
    target_id: str | None
    outcome: str
    detail: dict[str, Any] | None


def audit_rows(entries: list[AuditEntry], existing_users: set[str]) -> list[AuditRow]:
    """The entries to show; a login names its user only when that user exists.

    The username box of a failed login sometimes holds a password typed in the wrong field:
    text that names no user is never put on screen.
    """
    rows = []
    for entry in entries:
        actor, target_id = entry.actor, entry.target_id
        if entry.action == "login" and entry.target_type == "user":
            actor = actor if actor in existing_users else None
            target_id = target_id if target_id in existing_users else None
        rows.append(AuditRow(entry.id, entry.at, actor, entry.action, entry.target_type, target_id,
                             entry.outcome, entry.detail))
    return rows


def login_names(entries: list[AuditEntry]) -> set[str]:
    """The typed usernames of the login entries among ``entries`` (to check which users exist)."""
    return {name for entry in entries if entry.action == "login" and entry.target_type == "user"
            for name in (entry.actor, entry.target_id) if name}
