"""The operator console: server-rendered pages enhanced by htmx, a thin layer over the service.

``init_console(app)`` registers the blueprints (``CONSOLE_BLUEPRINTS``: each page module owns
its routes on its own blueprint), the session cookie settings, the per-request user and
permissions, and the security headers every response carries.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response

from ..accounts.login_counters import counter_store
from ..accounts.throttle import LoginThrottle
from . import (
    account,
    admin,
    auth,
    clock,
    exports,
    i18n,
    limits,
    new_task,
    notifications,
    schedules,
    views,
)
from .event_messages import register as register_event_messages
from .formatting import register as register_formatting
from .history import bp as history_bp
from .sessions import current_user, load_current_user
from .workflows import bp as workflows_bp

# Every console blueprint, registered in this order. A new page module adds its ``bp`` here.
CONSOLE_BLUEPRINTS: tuple[Blueprint, ...] = (
    auth.bp,
    views.bp,
    notifications.bp,
    schedules.bp,
    limits.bp,
    workflows_bp,
    history_bp,
    exports.bp,
    new_task.bp,
    account.bp,
    clock.bp,
    admin.bp,
    i18n.bp,
)

# No inline script or style anywhere: htmx and our own script are static files, and htmx's
# inline indicator style is switched off through its meta config.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "font-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def init_console(app: Flask) -> None:
    """Register the console's blueprints, login handling, cookie settings and security headers."""
    _configure_session(app)
    app.extensions["console_login_throttle"] = LoginThrottle(store=counter_store(
        app.config.get("REDIS_URL"), app.config["ASYNC_TASK_REDIS_LOCK_PREFIX"]))
    for blueprint in CONSOLE_BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_formatting(app)
    clock.register(app)
    register_event_messages(app)
    i18n.init_i18n(app)
    app.before_request(load_current_user)
    app.before_request(auth.refuse_nul_characters)
    app.context_processor(permissions_context)
    app.after_request(add_security_headers)


def permissions_context() -> dict[str, Any]:
    """Every template: ``current`` (the user, or ``None``) and ``can_operate``, worked out once a request."""
    user = current_user()
    return {"current": user, "can_operate": user is not None and user.can_operate}


def _configure_session(app: Flask) -> None:
    """HttpOnly, SameSite=Lax session cookies; Secure unless debugging, testing or told otherwise."""
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    app.config.setdefault("SESSION_COOKIE_NAME", "session")
    env_secure = os.environ.get("SESSION_COOKIE_SECURE")
    if env_secure is not None:
        # Plain-HTTP deployments on a non-local host need an explicit opt-out.
        app.config["SESSION_COOKIE_SECURE"] = env_secure.strip().lower() not in {"0", "false", "no", "off"}
    elif not app.config.get("SESSION_COOKIE_SECURE"):
        app.config["SESSION_COOKIE_SECURE"] = not (app.debug or app.testing)
    if app.config.get("PERMANENT_SESSION_LIFETIME") == timedelta(days=31):  # Flask's default
        # The cookie lives as long as the session may (sessions.py checks the idle time).
        app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(seconds=app.config["ASYNC_TASK_SESSION_LIFETIME"])
    if app.config.get("WTF_CSRF_TIME_LIMIT") == 3600:  # Flask-WTF's default
        # The htmx header carries the token rendered with the page; an operator keeping the
        # console open for hours must still be able to cancel, so the token lives as long as
        # the session (which is what binds it).
        app.config["WTF_CSRF_TIME_LIMIT"] = None


def add_security_headers(response: Response) -> Response:
    """Every response: CSP without inline code, nosniff, no framing, a same-origin referrer."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
