"""When a schedule fires: cron expressions and intervals, in the schedule's time zone.

Fire times come from APScheduler 3.11's ``CronTrigger`` and ``IntervalTrigger``. A cron
expression is matched against the **wall clock** of the schedule's zone (APScheduler is asked
for the next matching wall time, then that wall time is turned into an instant here), because
APScheduler alone fires a 02:30 job twice on the day the clocks go back. The rules:

* a wall time that does not exist (clocks go forward over it) fires once, at the same distance
  past the gap: 02:30 in Europe/Berlin on the spring-forward day fires at 03:30 CEST;
* a wall time that happens twice (clocks go back) fires once, the first time, unless the hour
  field is a wildcard (``30 * * * *`` keeps firing every real hour through the repeated hour).

Intervals are elapsed time counted from the schedule's anchor, so a zone change or DST never
stretches or shortens them. Standard cron day-of-week numbers (0 and 7 = Sunday) are
translated to names, since APScheduler 3 counts 0 as Monday.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..tasks.errors import ValidationError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
WEEKDAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MAX_INTERVAL_SECONDS = 366 * 24 * 3600 * 10
ONE_MICROSECOND = timedelta(microseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Wall-clock searches give up after this many candidates (a cron that matches only
# non-existent or already-passed wall times cannot loop forever).
MAX_CANDIDATES = 10_000


def _earliest_aligned(anchor: datetime, seconds: int) -> datetime:
    """The earliest time after 1970 that is a whole number of intervals from ``anchor``.

    Slots of a schedule without a start lie on the grid through its anchor in both directions,
    so a backfill can reach back before the schedule was created.
    """
    steps = int((anchor - EPOCH).total_seconds() // seconds)
    return anchor - timedelta(seconds=steps * seconds)


def validate_timezone(name: object) -> ZoneInfo:
    """An IANA zone name (``Europe/Berlin``, ``UTC``), or a ValidationError naming ``timezone``."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("timezone must be an IANA time zone name such as Europe/Berlin", field="timezone")
    text = name.strip()
    if text not in available_timezones() and text != "UTC":
        raise ValidationError(f"unknown time zone {text!r}; use an IANA name such as Europe/Berlin or UTC",
                              field="timezone")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"unknown time zone {text!r}", field="timezone") from None


def expand_alias(expression: str) -> str:
    """``@daily`` -> ``0 0 * * *``; any other expression unchanged (whitespace normalised)."""
    text = " ".join(expression.split())
    return ALIASES.get(text.lower(), text)


def _weekday_numbers(part: str) -> set[int]:
    """One comma-separated element of a standard day-of-week field as numbers 0 (Sunday) to 6."""
    names = {name: index for index, name in enumerate(WEEKDAY_NAMES)}
    base, _, step_text = part.partition("/")
    step = int(step_text) if step_text else 1
    if step < 1:
        raise ValueError("a step must be at least 1")

    def number(token: str) -> int:
        token = token.strip().lower()
        if token in names:
            return names[token]
        value = int(token)
        if not 0 <= value <= 7:
            raise ValueError(f"day of week {token} is out of range 0-7")
        return value % 7 if value == 7 else value

    if base == "*":
        low, high = 0, 6
    elif "-" in base:
        low_text, high_text = base.split("-", 1)
        low, high = number(low_text), number(high_text)
        if high_text.strip() == "7":
            high = 7
        if low > high:
            raise ValueError(f"range {base} runs backwards")
    else:
        low = high = number(base)
        if step_text:
            high = 6
    return {value % 7 for value in range(low, high + 1, step)}


def _apscheduler_day_of_week(field: str) -> str:
    if field == "*":
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        days |= _weekday_numbers(part)
    return ",".join(WEEKDAY_NAMES[day] for day in sorted(days))


@dataclass(frozen=True)
class CronFields:
    """The five fields of a standard cron expression (after alias expansion)."""

    minute: str
    hour: str
    day: str
    month: str
    day_of_week: str

    @property
    def hour_is_wildcard(self) -> bool:
        return self.hour == "*" or self.hour.startswith("*/")


def parse_cron(expression: object) -> CronFields:
    """Five fields or an ``@hourly``-style alias; a ValidationError naming ``cron`` otherwise."""
    if not isinstance(expression, str) or not expression.strip():
        raise ValidationError("cron must be a cron expression such as '30 2 * * *' or '@daily'", field="cron")
    text = expand_alias(expression)
    if text.startswith("@"):
        raise ValidationError(f"unknown cron alias {text!r}; use one of {', '.join(ALIASES)}", field="cron")
    fields = text.split(" ")
    if len(fields) != 5:
        raise ValidationError(f"cron needs 5 fields (minute hour day month weekday), got {len(fields)}: "
                              f"{expression.strip()!r}", field="cron")
    parsed = CronFields(*fields)
    _wall_clock_trigger(parsed)  # raises for a bad field
    return parsed


def _wall_clock_trigger(fields: CronFields) -> CronTrigger:
    """An APScheduler trigger matching wall-clock times (evaluated as if the zone were UTC)."""
    try:
        return CronTrigger(minute=fields.minute, hour=fields.hour, day=fields.day, month=fields.month,
                           day_of_week=_apscheduler_day_of_week(fields.day_of_week), second=0,
                           timezone=UTC)
    except ValueError as exc:
        raise ValidationError(f"invalid cron expression {' '.join(_as_tuple(fields))!r}: {exc}",
                              field="cron") from None


def _as_tuple(fields: CronFields) -> tuple[str, str, str, str, str]:
    return fields.minute, fields.hour, fields.day, fields.month, fields.day_of_week


def validate_interval(value: object) -> int:
    """Whole seconds, at least 1; a ValidationError naming ``interval_seconds`` otherwise."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("interval_seconds must be a whole number of seconds", field="interval_seconds")
    if value < 1:
        raise ValidationError(f"interval_seconds must be at least 1, got {value}", field="interval_seconds")
    if value > MAX_INTERVAL_SECONDS:
        raise ValidationError(f"interval_seconds must be at most {MAX_INTERVAL_SECONDS}", field="interval_seconds")
    return value


class Recurrence:
    """The fire times of one schedule definition: cron or interval, zone, anchor, start and end."""

    def __init__(self, *, cron: str | None, interval_seconds: int | None, timezone: str,
                 anchor_at: datetime, start_at: datetime | None = None, end_at: datetime | None = None) -> None:
        if (cron is None) == (interval_seconds is None):
            raise ValidationError("give either cron or interval_seconds, not both or neither",
                                  field="cron" if cron is not None else "interval_seconds")
        self.zone = validate_timezone(timezone)
        self.start_at = start_at
        self.end_at = end_at
        self.cron = parse_cron(cron) if cron is not None else None
        self.interval_seconds = validate_interval(interval_seconds) if interval_seconds is not None else None
        if self.cron is not None:
            self._cron_trigger = _wall_clock_trigger(self.cron)
        else:
            assert self.interval_seconds is not None
            self._interval_trigger = IntervalTrigger(seconds=self.interval_seconds,
                                                     start_date=start_at or _earliest_aligned(anchor_at,
                                                                                              self.interval_seconds),
                                                     timezone=UTC)

    def next_at_or_after(self, moment: datetime) -> datetime | None:
        """The first fire time at or after ``moment`` (UTC), or None once the schedule has ended."""
        if self.start_at is not None and moment < self.start_at:
            moment = self.start_at
        if self.cron is not None:
            found = self._next_cron(moment)
        else:
            found = self._interval_trigger.get_next_fire_time(None, moment)
        if found is None:
            return None
        found = found.astimezone(UTC)
        if self.end_at is not None and found > self.end_at:
            return None
        return found

    def next_after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after ``moment``."""
        return self.next_at_or_after(moment + ONE_MICROSECOND)

    def fires(self, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """Fire times in ``[start, end)`` in order, at most ``limit`` of them."""
        found: list[datetime] = []
        moment = self.next_at_or_after(start)
        while moment is not None and moment < end and len(found) < limit:
            found.append(moment)
            moment = self.next_after(moment)
        return found

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times at or after ``after``."""
        found: list[datetime] = []
        moment = self.next_at_or_after(after)
        while moment is not None and len(found) < count:
            found.append(moment)
            moment = self.next_after(moment)
        return found

    def latest_before(self, earliest: datetime, end: datetime, count: int) -> list[datetime]:
        """The last ``count`` fire times in ``[earliest, end)``, oldest first.

        Looks back from ``end`` over a window that doubles until it holds ``count`` fires (or
        reaches ``earliest``), so a long outage of a every-second schedule costs a few hundred
        steps, not one per missed second.
        """
        if count <= 0 or earliest >= end:
            return []
        window = timedelta(seconds=max(60, 2 * count * (self.interval_seconds or 60)))
        while True:
            low = max(earliest, end - window)
            found = self._all_between(low, end)
            if len(found) >= count or low == earliest:
                return found[-count:]
            window *= 2

    def _all_between(self, start: datetime, end: datetime) -> list[datetime]:
        found: list[datetime] = []
        for moment in self._iterate(start):
            if moment >= end:
                break
            found.append(moment)
        return found

    def _iterate(self, start: datetime) -> Iterator[datetime]:
        moment = self.next_at_or_after(start)
        while moment is not None:
            yield moment
            moment = self.next_after(moment)

    def _next_cron(self, moment: datetime) -> datetime | None:
        """Next wall-clock match whose instant is at or after ``moment`` (rules in the module doc)."""
        assert self.cron is not None
        wall = moment.astimezone(self.zone).replace(tzinfo=None)
        search = wall.replace(tzinfo=UTC)
        near = timedelta(hours=3)
        if (moment - near).astimezone(self.zone).utcoffset() != (moment + near).astimezone(self.zone).utcoffset():
            # Near a clock change an earlier wall time can stand for a later instant (the
            # repeated hour), so the search starts a few hours back in wall time.
            search -= near
        for _ in range(MAX_CANDIDATES):
            candidate = self._cron_trigger.get_next_fire_time(None, search)
            if candidate is None:
                return None
            for instant in self._instants_of(candidate.replace(tzinfo=None)):
                if instant >= moment:
                    return instant
            search = candidate + timedelta(seconds=1)
        return None

    def _instants_of(self, wall: datetime) -> list[datetime]:
        """The UTC instants a wall time of the zone stands for (one, or two in a repeated hour)."""
        first = wall.replace(tzinfo=self.zone, fold=0)
        second = wall.replace(tzinfo=self.zone, fold=1)
        first_utc, second_utc = first.astimezone(UTC), second.astimezone(UTC)
        if first.utcoffset() == second.utcoffset():
            return [first_utc]
        if first_utc > second_utc:
            # A gap (clocks went forward): fold=0 reads the wall time with the offset from
            # before the change, which lands just past the gap.
            return [first_utc]
        assert self.cron is not None
        if self.cron.hour_is_wildcard:
            return [first_utc, second_utc]
        return [first_utc]
