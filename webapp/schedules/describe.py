"""A plain-language reading of a schedule's expression, in English or Simplified Chinese.

The console shows it under the form as the operator types ("at 02:30 every day, Europe/Berlin")
so a wrong field is noticed before saving. Common shapes get a sentence; anything else is read
field by field. The wording lives here rather than in the console's message catalogue because
it is assembled from parts and the two languages order those parts differently.
"""

from __future__ import annotations

from .triggers import CronFields, parse_cron

WEEKDAYS = {
    "en": ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    "zh_Hans": ("周日", "周一", "周二", "周三", "周四", "周五", "周六"),
}
MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
             "October", "November", "December")
WEEKDAY_ALIASES = {name: index for index, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}


def describe_interval(seconds: int, timezone: str, language: str = "en") -> str:
    """``every 15 minutes`` / ``每 15 分钟``."""
    units = [(86400, "day", "天"), (3600, "hour", "小时"), (60, "minute", "分钟"), (1, "second", "秒")]
    for size, english, chinese in units:
        if seconds % size == 0:
            count = seconds // size
            if language == "zh_Hans":
                return f"每 {count} {chinese}" if count != 1 else f"每{chinese}"
            return f"every {english}" if count == 1 else f"every {count} {english}s"
    return f"every {seconds} seconds"  # unreachable: every count is a multiple of 1 s


def describe_cron(expression: str, timezone: str, language: str = "en") -> str:
    """``at 02:30 every day, Europe/Berlin`` / ``每天 02:30（Europe/Berlin）``."""
    fields = parse_cron(expression)
    reading = _known_shape(fields, language) or _field_by_field(fields, language)
    return f"{reading}（{timezone}）" if language == "zh_Hans" else f"{reading}, {timezone}"


def _number(text: str) -> int | None:
    return int(text) if text.isdecimal() else None


def _numbers(text: str) -> list[int] | None:
    parts = text.split(",")
    values = [_number(part) for part in parts]
    return None if any(value is None for value in values) else [v for v in values if v is not None]


def _weekdays(text: str, language: str) -> str | None:
    names = WEEKDAYS[language]
    if "-" in text and "," not in text and "/" not in text:
        low, high = text.split("-", 1)
        first, last = _weekday_index(low), _weekday_index(high)
        if first is None or last is None:
            return None
        return f"{names[first]}至{names[last]}" if language == "zh_Hans" else f"{names[first]} to {names[last]}"
    indexes = [_weekday_index(part) for part in text.split(",")]
    if any(index is None for index in indexes):
        return None
    words = [names[index] for index in indexes if index is not None]
    return "、".join(words) if language == "zh_Hans" else ", ".join(words)


def _weekday_index(text: str) -> int | None:
    token = text.strip().lower()
    if token in WEEKDAY_ALIASES:
        return WEEKDAY_ALIASES[token]
    value = _number(token)
    return None if value is None or value > 7 else value % 7


def _known_shape(f: CronFields, language: str) -> str | None:
    zh = language == "zh_Hans"
    minute, hours = _number(f.minute), _numbers(f.hour)
    every_day = f.day == "*" and f.month == "*" and f.day_of_week == "*"
    if f.minute == "*" and f.hour == "*" and every_day:
        return "每分钟" if zh else "every minute"
    if f.minute.startswith("*/") and f.hour == "*" and every_day and _number(f.minute[2:]):
        step = f.minute[2:]
        return f"每 {step} 分钟" if zh else f"every {step} minutes"
    if minute is not None and f.hour == "*" and every_day:
        return f"每小时第 {minute} 分钟" if zh else f"at minute {minute} of every hour"
    if minute is not None and f.hour.startswith("*/") and every_day and _number(f.hour[2:]):
        step = f.hour[2:]
        return f"每 {step} 小时的第 {minute} 分钟" if zh else f"at minute {minute} every {step} hours"
    if minute is None or hours is None:
        return None
    times = [f"{hour:02d}:{minute:02d}" for hour in hours]
    at = "、".join(times) if zh else " and ".join(times)
    if every_day:
        return f"每天 {at}" if zh else f"at {at} every day"
    if f.day == "*" and f.month == "*":
        days = _weekdays(f.day_of_week, language)
        if days is None:
            return None
        return f"每{days} {at}" if zh else f"at {at} on {days}"
    day, month = _number(f.day), _number(f.month)
    if day is not None and f.day_of_week == "*" and f.month == "*":
        return f"每月 {day} 日 {at}" if zh else f"at {at} on day {day} of every month"
    if day is not None and month is not None and 1 <= month <= 12 and f.day_of_week == "*":
        return f"每年 {month} 月 {day} 日 {at}" if zh else f"at {at} on {day} {MONTHS_EN[month - 1]}"
    return None


def _field_by_field(f: CronFields, language: str) -> str:
    if language == "zh_Hans":
        return f"分钟 {f.minute}，小时 {f.hour}，日 {f.day}，月 {f.month}，星期 {f.day_of_week}"
    return f"minute {f.minute}, hour {f.hour}, day of month {f.day}, month {f.month}, day of week {f.day_of_week}"


def describe(cron: str | None, interval_seconds: int | None, timezone: str, language: str = "en") -> str:
    """The reading of whichever of ``cron`` and ``interval_seconds`` the schedule has."""
    language = "zh_Hans" if language == "zh_Hans" else "en"
    if cron is not None:
        return describe_cron(cron, timezone, language)
    if interval_seconds is not None:
        return describe_interval(interval_seconds, timezone, language)
    return ""
