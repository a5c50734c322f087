"""Console languages: English and Simplified Chinese, with Flask-Babel.

The language is the one chosen with the switch in the page (a ``console_lang`` cookie, so it also
applies on the login page and survives logging out), else the best match of the browser's
``Accept-Language``, else English. Only the console is translated; the JSON API and engine error
messages stay English (they are read by programs and searched for in logs).

Translations live in ``webapp/translations/zh_Hans/LC_MESSAGES/messages.po``; the compiled
``messages.mo`` next to it is committed (a test checks it matches the ``.po`` and that every
string in the code and templates is translated). After changing strings::

    .venv/bin/pybabel extract -F webapp/translations/babel.cfg -k lazy_gettext -o webapp/translations/messages.pot .
    .venv/bin/pybabel update -i webapp/translations/messages.pot -d webapp/translations
    # translate the new entries in the .po, then
    .venv/bin/pybabel compile -d webapp/translations
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    has_request_context,
    make_response,
    redirect,
    request,
)
from flask_babel import Babel, get_locale, lazy_gettext

from .auth import safe_next

LANGUAGES = {"en": "English", "zh_Hans": "简体中文"}
DEFAULT_LANGUAGE = "en"
LANGUAGE_COOKIE = "console_lang"
COOKIE_MAX_AGE = 365 * 24 * 3600
TRANSLATIONS = Path(__file__).resolve().parent.parent / "translations"

babel = Babel()
bp = Blueprint("i18n", __name__)

# Status codes stay in data-status attributes and URLs; only the visible label is translated
# (in English the label is the code itself, as operators know it from the API and logs).
STATUS_LABELS = {
    "PENDING": lazy_gettext("PENDING"),
    "PROCESSING": lazy_gettext("PROCESSING"),
    "SUCCESS": lazy_gettext("SUCCESS"),
    "FAILURE": lazy_gettext("FAILURE"),
    "RETRYING": lazy_gettext("RETRYING"),
    "CANCELLED": lazy_gettext("CANCELLED"),
    "WAITING": lazy_gettext("WAITING"),  # a workflow's task waiting for its parents
    "RUNNING": lazy_gettext("RUNNING"),  # workflows
    "SUCCEEDED": lazy_gettext("SUCCEEDED"),
    "ONLINE": lazy_gettext("ONLINE"),
    "STALE": lazy_gettext("STALE"),
    "STOPPED": lazy_gettext("STOPPED"),
    "SENT": lazy_gettext("SENT"),
    "SKIPPED": lazy_gettext("SKIPPED"),
    "FAILED": lazy_gettext("FAILED"),
    "DEAD": lazy_gettext("DEAD"),
    "PURGED": lazy_gettext("PURGED"),  # a schedule run whose task has been deleted since
}


ROLE_LABELS = {
    "viewer": lazy_gettext("viewer"),
    "operator": lazy_gettext("operator"),
    "admin": lazy_gettext("admin"),
}


def language_from_header() -> str:
    """The supported language the browser's ``Accept-Language`` prefers (English when none fits)."""
    best = request.accept_languages.best_match(["en", "zh"])
    return "zh_Hans" if best == "zh" else DEFAULT_LANGUAGE


def select_language() -> str:
    """Flask-Babel's locale selector: the page switch's cookie, else ``Accept-Language``."""
    if not has_request_context():
        return DEFAULT_LANGUAGE
    chosen = request.cookies.get(LANGUAGE_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return language_from_header()


def current_language() -> str:
    """The language this request is rendered in (``en`` or ``zh_Hans``)."""
    locale = get_locale()
    if locale is None:
        return DEFAULT_LANGUAGE
    return "zh_Hans" if locale.language == "zh" else DEFAULT_LANGUAGE


def html_lang() -> str:
    """The ``lang`` attribute of the page: ``en`` or ``zh-Hans``."""
    return current_language().replace("_", "-")


def status_label(status: Any) -> str:
    """A status code's visible label in the current language."""
    text = "" if status is None else str(status)
    label = STATUS_LABELS.get(text)
    return str(label) if label is not None else text


def role_label(role: Any) -> str:
    """A console role's visible name in the current language."""
    text = "" if role is None else str(role)
    label = ROLE_LABELS.get(text)
    return str(label) if label is not None else text


@bp.post("/language")
def choose_language() -> Response:
    """Remember the operator's language in a cookie and go back to the page they were on."""
    chosen = (request.form.get("lang") or "").strip()
    response = make_response(redirect(safe_next(request.form.get("next")), 303))
    if chosen in LANGUAGES:
        response.set_cookie(LANGUAGE_COOKIE, chosen, max_age=COOKIE_MAX_AGE, httponly=True, samesite="Lax",
                            secure=bool(current_app.config.get("SESSION_COOKIE_SECURE")))
    return response


def _template_context() -> dict[str, Any]:
    return {"languages": LANGUAGES, "current_language": current_language(), "html_lang": html_lang()}


def init_i18n(app: Flask) -> None:
    """Bind Flask-Babel (translations in ``webapp/translations``); the switch's ``bp`` is in CONSOLE_BLUEPRINTS."""
    babel.init_app(app, default_locale=DEFAULT_LANGUAGE, default_translation_directories=str(TRANSLATIONS),
                   locale_selector=select_language)
    app.context_processor(_template_context)
    app.jinja_env.filters["status_label"] = status_label
    app.jinja_env.filters["role_label"] = role_label


def compile_translations(directory: Path = TRANSLATIONS) -> list[Path]:
    """Compile every ``messages.po`` under ``directory`` into the ``messages.mo`` beside it."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    for po_path in sorted(directory.glob("*/LC_MESSAGES/messages.po")):
        with po_path.open("rb") as source:
            catalog = read_po(source, locale=po_path.parent.parent.name)
        mo_path = po_path.with_suffix(".mo")
        with mo_path.open("wb") as target:
            write_mo(target, catalog)
        written.append(mo_path)
    return written

