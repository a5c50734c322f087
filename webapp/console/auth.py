"""Console login: the password form, logout, and the guards in front of every console page.

Checking an attempt (throttle, password, counters, audit) is ``accounts.login``'s job; the
session's lifetime and the current user are ``sessions``'. A HEAD request is a GET here as
everywhere: it shows the form, never logs in and never counts as a failed login.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import Forbidden

from ..accounts.login import attempt_login
from ..accounts.models import Role
from ..accounts.throttle import LoginThrottle
from ..accounts.users import log_out_everywhere
from .responses import error_response, is_htmx, no_store, register_error_pages
from .sessions import current_user, start_session

bp = Blueprint("auth", __name__)
bp.after_request(no_store)

F = TypeVar("F", bound=Callable[..., Any])
READ_METHODS = ("GET", "HEAD")


@bp.errorhandler(CSRFError)
def login_csrf_error(exc: CSRFError) -> Any:
    """A login or logout form posted without a valid CSRF token (e.g. a stale tab): ask again."""
    return render_template("login.html", next_url="/", username="",
                           error=gettext("The form expired. Please log in again.")), 400


def refuse_nul_characters() -> Response | None:
    """Every console request: a NUL character in a parameter or the URL is a 400, up front.

    No field takes one, and PostgreSQL cannot even compare text holding it, so a filter, a
    login name or a path with NUL would otherwise end in a server error. (The API refuses the
    same text itself, with a 422 naming the field.)
    """
    top_blueprint = (request.blueprint or "").partition(".")[0]  # api.workflows belongs to the API
    if top_blueprint in ("api", "health") or request.endpoint in (None, "static"):
        return None
    texts = [text for source in (request.args, request.form) for pair in source.items(multi=True)
             for text in pair]
    texts += [value for value in (request.view_args or {}).values() if isinstance(value, str)]
    if not any("\x00" in text for text in texts):
        return None
    return error_response(400, "The request was refused: it contains a NUL character (\\u0000), "
                               "which no field accepts.")


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything off-site, or with a control character, becomes ``/``."""
    if not target or any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def require_login() -> Response | None:
    """``before_request`` of every console blueprint: anonymous visitors go to the login page."""
    if current_user() is not None:
        return None
    if is_htmx():
        # A redirect inside an htmx swap would paste the login form into a table cell.
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        here = current.path + (f"?{current.query}" if current.query else "") if current.path else "/"
        response = make_response("", 401)
        response.headers["HX-Redirect"] = url_for("auth.login", next=safe_next(here))
        return response
    return cast(Response, redirect(url_for("auth.login", next=safe_next(request.full_path.rstrip("?")))))


def protected_blueprint(name: str, import_name: str, **options: Any) -> Blueprint:
    """A console blueprint: login required, console error pages, nothing cached.

    Every console page module makes its blueprint here and lists it in ``CONSOLE_BLUEPRINTS``
    (``webapp/console/__init__.py``), the one place blueprints are registered.
    """
    blueprint = Blueprint(name, import_name, **options)
    blueprint.before_request(require_login)
    register_error_pages(blueprint)
    return blueprint


def requires(role: Role) -> Callable[[F], F]:
    """View decorator: 403 unless the user's role is at least ``role``."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None or not user.can(role):
                raise Forbidden(f"this needs the {role.value} role")
            return view(*args, **kwargs)

        return cast(F, wrapped)

    return decorator


def login_throttle() -> LoginThrottle:
    """The application's login throttle (its policy; the counters live in the database)."""
    return cast(LoginThrottle, current_app.extensions["console_login_throttle"])


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Show the login form; check the password, slowing down repeated failures."""
    next_url = safe_next(request.values.get("next"))
    if request.method in READ_METHODS:
        if current_user() is not None:
            return redirect(next_url)
        return render_template("login.html", next_url=next_url, username="", error=None)
    username = (request.form.get("username") or "").strip()
    outcome = attempt_login(login_throttle(), username, request.form.get("password") or "", request.remote_addr)
    if outcome.throttled:
        seconds = int(outcome.wait_seconds) + 1
        response = make_response(render_template(
            "login.html", next_url=next_url, username=username,
            error=gettext("Too many failed logins. Try again in %(seconds)s seconds.", seconds=seconds)), 429)
        response.headers["Retry-After"] = str(seconds)
        return response
    if outcome.identity is None:
        return render_template("login.html", next_url=next_url, username=username,
                               error=gettext("Invalid username or password.")), 401
    start_session(outcome.identity)
    return redirect(next_url)


@bp.post("/logout")
def logout() -> Any:
    """End the session (POST only, with the CSRF token, so no link can log anyone out)."""
    user = current_user()
    if user is not None:
        log_out_everywhere(user.id, user.username)  # this session, every copy of it, and the user's others
    session.clear()
    return redirect(url_for("auth.login"))
