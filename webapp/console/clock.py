"""One clock for the whole console: every time shown and every time typed in one zone.

Each user chooses (switch in the top bar, kept on their ``console_user.time_zone`` row) between
their browser's own zone (``local``, the default) and UTC. The server renders every time in
that zone, so pages, live refreshes, charts' hover texts and filter inputs all agree, and a
zone-less time typed into a filter (``datetime-local``) is read in the zone it is shown in:
someone in GMT+8 typing 09:00 means 01:00 UTC.

The browser's zone is what ``static/console.js`` reports in the ``console_tz`` cookie
(``Intl.DateTimeFormat().resolvedOptions().timeZone``, an IANA name such as
``Asia/Shanghai``), set on the very first page (the login form) and whenever it changes. A page
rendered before the server knew the zone is rendered again once by the script. Without
JavaScript (no cookie) "local" falls back to UTC, and says so in the switch.

Machine-readable values stay UTC: ``<time datetime>`` attributes, URLs (``created_after=...Z``),
the API and exports. Mails are rendered outside any browser and keep the ``utc`` filter.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Flask, Response, g, has_request_context, make_response, redirect, request
from flask_babel import gettext
from markupsafe import Markup, escape

from ..accounts.models import CLOCK_LOCAL, CLOCK_UTC
from ..accounts.users import set_time_zone
from ..tasks.errors import ValidationError
from ..tasks.validation import parse_time
from .auth import protected_blueprint, safe_next
from .formatting import html_datetime
from .sessions import current_user

BROWSER_ZONE_COOKIE = "console_tz"
# IANA names: letters, digits and _ + - / (e.g. America/Argentina/Buenos_Aires, Etc/GMT+8).
ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*")
MAX_ZONE_NAME = 64
INPUT_FORMAT = "%Y-%m-%dT%H:%M:%S"  # what a datetime-local input with step=1 holds

bp = protected_blueprint("clock", __name__)


def browser_zone_name() -> str | None:
    """The IANA zone the browser reported (``console_tz`` cookie), if it names a known zone."""
    if not has_request_context():
        return None
    name = request.cookies.get(BROWSER_ZONE_COOKIE, "")
    if not name or len(name) > MAX_ZONE_NAME or not ZONE_NAME.fullmatch(name):
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
    return name


def clock_choice() -> str:
    """This request's user's choice (``local`` or ``utc``); ``local`` before anyone logs in."""
    user = current_user() if has_request_context() else None
    return user.time_zone if user is not None and user.time_zone == CLOCK_UTC else CLOCK_LOCAL


def display_zone_name() -> str:
    """The zone every time of this request is shown in: the browser's when chosen and known, else UTC."""
    if not has_request_context():
        return "UTC"
    if "clock_zone" not in g:
        browser = browser_zone_name() if clock_choice() == CLOCK_LOCAL else None
        g.clock_zone = browser or "UTC"
    return str(g.clock_zone)


def display_zone() -> tzinfo:
    """The ``tzinfo`` of ``display_zone_name()``."""
    name = display_zone_name()
    return UTC if name == "UTC" else ZoneInfo(name)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def offset_label(moment: datetime | None = None) -> str:
    """The display zone's offset at ``moment`` (now by default): ``UTC``, ``UTC+8``, ``UTC-3:30``."""
    zone = display_zone()
    local = _aware(moment or datetime.now(UTC)).astimezone(zone)
    offset = local.utcoffset()
    if zone is UTC or offset is None:
        return "UTC"
    minutes = int(offset.total_seconds() // 60)
    if minutes == 0 and display_zone_name() in ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu"):
        return "UTC"
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def clock_text(value: datetime | None, seconds: bool = True) -> str:
    """A time as the console shows it: ``2026-01-01 20:00:00 UTC+8`` (or an em dash for none)."""
    if value is None:
        return "—"
    local = _aware(value).astimezone(display_zone())
    return local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M") + " " + offset_label(value)


def clock_time(value: datetime | None) -> Markup:
    """A ``<time>`` element: the machine value in UTC, the text in the display zone (UTC on hover)."""
    if value is None:
        return Markup("—")
    utc_text = _aware(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        html_datetime(value), utc_text, clock_text(value))


def input_value(value: datetime | None) -> str:
    """The value a ``datetime-local`` input shows for ``value``: display zone, no suffix."""
    return _aware(value).astimezone(display_zone()).strftime(INPUT_FORMAT) if value is not None else ""


def parse_clock_input(text: str, field: str) -> datetime:
    """A typed time as UTC: ISO-8601 with a zone keeps its zone; a zone-less one (what a
    ``datetime-local`` input sends) is read in the display zone, the zone it was shown in."""
    try:
        return parse_time(text, field)
    except ValidationError:
        try:
            naive = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValidationError(f"{field} must be a time like 2026-01-01T12:00:00", field=field) from None
        if naive.tzinfo is not None:
            raise
        try:
            return naive.replace(tzinfo=display_zone()).astimezone(UTC)
        except OverflowError:
            raise ValidationError(f"{field} is out of the supported range", field=field) from None


def zone_hint() -> str:
    """What a time input's label says about its zone: ``(UTC+8)``."""
    return f"({offset_label()})"


@bp.post("/clock")
def choose_clock() -> Response:
    """Remember the user's clock (local time or UTC) and go back to the page they were on."""
    user = current_user()
    assert user is not None  # the blueprint's login guard ran
    try:
        set_time_zone(user.id, request.form.get("time_zone", ""))
    except ValidationError as exc:
        return make_response(escape(exc.message), 422)
    return make_response(redirect(safe_next(request.form.get("next")), 303))


def _template_context() -> dict[str, object]:
    browser = browser_zone_name()
    return {"clock_choice": clock_choice(), "clock_zone_name": display_zone_name(), "browser_zone": browser,
            "clock_offset": offset_label(), "clock_labels": {
                CLOCK_LOCAL: (gettext("Local time (%(zone)s)", zone=browser) if browser
                              else gettext("Local time (not known yet: UTC)")),
                CLOCK_UTC: "UTC"}}


def register(app: Flask) -> None:
    """Template filters ``clock`` (text) and ``when`` (a ``<time>`` element), and the switch's values."""
    app.jinja_env.filters["clock"] = clock_text
    app.jinja_env.filters["when"] = clock_time
    app.jinja_env.filters["input_time"] = input_value
    app.jinja_env.globals["zone_hint"] = zone_hint
    app.context_processor(_template_context)
