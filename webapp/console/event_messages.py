"""Timeline lines in the page's language: the engine's own event messages, translated when shown.

``task_event.message`` is stored in English (the API, logs and exports read it, and searches
for it); the console translates the messages the engine itself writes, recognised by their
shape, at display time. Text a processor wrote (a failure message) stays as written; where the
engine wraps it (``<message> (retry 1 of 3 in 5s)``) only the wrapping is translated. A message
of no known shape is shown unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Flask
from flask_babel import gettext

from .i18n import current_language

# Each engine message: its exact shape (named parts) and the msgid it is shown as. Parts named
# ``inner`` are engine messages themselves (translated in turn); the others are kept as written.
KNOWN_MESSAGES: tuple[tuple[re.Pattern[str], Callable[..., str]], ...] = tuple(
    (re.compile(pattern, re.DOTALL), shown) for pattern, shown in (
        (r"cancel requested while running; the processor decides when to stop",
         lambda **p: gettext("cancel requested while running; the processor decides when to stop", **p)),
        (r"edited and resubmitted as task (?P<id>\d+)", lambda **p: gettext("edited and resubmitted as task %(id)s", **p)),
        (r"bulk cancel", lambda **p: gettext("bulk cancel", **p)),
        (r"bulk retry", lambda **p: gettext("bulk retry", **p)),
        (r"start deadline passed", lambda **p: gettext("start deadline passed", **p)),
        (r"cancelled", lambda **p: gettext("cancelled", **p)),
        (r"cancelled at an operator's request", lambda **p: gettext("cancelled at an operator's request", **p)),
        (r"failed without a message", lambda **p: gettext("failed without a message", **p)),
        (r"(?P<inner>.*) \(retry (?P<number>\d+) of (?P<total>\d+) in (?P<delay>[\d.e+-]+)s\)",
         lambda **p: gettext("%(inner)s (retry %(number)s of %(total)s in %(delay)s s)", **p)),
        (r"(?P<inner>.*) \(not retryable\)", lambda **p: gettext("%(inner)s (not retryable)", **p)),
        (r"cancelled: the attempt failed after a cancel was requested \((?P<inner>.*)\)",
         lambda **p: gettext("cancelled: the attempt failed after a cancel was requested (%(inner)s)", **p)),
        (r"the cancel request was not honoured; the attempt ended (?P<status>[A-Z]+)",
         lambda **p: gettext("the cancel request was not honoured; the attempt ended %(status)s", **p)),
        (r"result of attempt (?P<number>\d+) arrived after its lease was lost; discarded \((?P<outcome>.*)\)",
         lambda **p: gettext("result of attempt %(number)s arrived after its lease was lost; discarded (%(outcome)s)", **p)),
        (r"ran longer than max-processing-time \((?P<seconds>[\d.e+-]+)s\)",
         lambda **p: gettext("ran longer than max-processing-time (%(seconds)s s)", **p)),
        (r"worker (?P<worker>\S+) stopped heartbeating", lambda **p: gettext("worker %(worker)s stopped heartbeating", **p)),
        (r"recovered (?P<count>\d+) times already \(limit max_retry_count \+ 1 = (?P<limit>\d+)\); "
         r"last: (?P<inner>.*); giving up",
         lambda **p: gettext("recovered %(count)s times already (limit max_retry_count + 1 = %(limit)s); "
                      "last: %(inner)s; giving up", **p)),
        (r"time limit of (?P<seconds>[\d.e+-]+) s exceeded", lambda **p: gettext("time limit of %(seconds)s s exceeded", **p)),
        (r"soft time limit of (?P<seconds>[\d.e+-]+) s passed; the attempt was asked to stop",
         lambda **p: gettext("soft time limit of %(seconds)s s passed; the attempt was asked to stop", **p)),
        (r"workflow cancelled", lambda **p: gettext("workflow cancelled", **p)),
        (r"workflow retried", lambda **p: gettext("workflow retried", **p)),
        (r"every parent succeeded", lambda **p: gettext("every parent succeeded", **p)),
        (r"a task it depends on did not succeed", lambda **p: gettext("a task it depends on did not succeed", **p)),
        (r"(?P<kind>\w+) callback of workflow (?P<id>\d+)", lambda **p: gettext("%(kind)s callback of workflow %(id)s", **p)),
    ))

MAX_DEPTH = 4  # messages nest (a retry of a "time limit exceeded"): a few levels, never unbounded


def event_message(text: str | None, depth: int = 0) -> str | None:
    """``text`` in the page's language when the engine wrote it; anything else as it is."""
    if not text or current_language() == "en" or depth > MAX_DEPTH:
        return text
    for pattern, shown in KNOWN_MESSAGES:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        parts = {name: (event_message(value, depth + 1) if name == "inner" else value)
                 for name, value in match.groupdict().items()}
        return shown(**parts)
    return text


def register(app: Flask) -> None:
    """The ``event_message`` template filter."""
    app.jinja_env.filters["event_message"] = event_message
