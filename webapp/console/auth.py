"""Console login: password form, session, roles, and the guard in front of every console page."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
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

from ..accounts.models import ROLE_RANK, Role, User
from ..accounts.users import (
    LoginThrottle,
    authenticate,
    begin_write,
    end_all_sessions,
    record_login,
)
from ..extensions import db
from ..tasks.service import AsyncTaskService

bp = Blueprint("auth", __name__)

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CurrentUser:
    """The logged-in user as plain values (no ORM object kept across the request)."""

    id: int
    username: str
    role: str

    def can(self, role: Role | str) -> bool:
        """Whether this user's role is at least ``role``."""
        return ROLE_RANK[Role(self.role)] >= ROLE_RANK[Role(role)]


def no_store(response: Response) -> Response:
    """Console pages show live state and secrets: never cache them (back button included)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


bp.after_request(no_store)


@bp.errorhandler(CSRFError)
def login_csrf_error(exc: CSRFError) -> Any:
    """A login or logout form posted without a valid CSRF token (e.g. a stale tab): ask again."""
    return render_template("login.html", next_url="/", username="",
                           error=gettext("The form expired. Please log in again.")), 400


@bp.before_app_request
def refuse_nul_characters() -> Response | None:
    """Every console request: a NUL character in a parameter or the URL is a 400, up front.

    No field takes one, and PostgreSQL cannot even compare text holding it, so a filter, a
    login name or a path with NUL would otherwise end in a server error. (The API refuses the
    same text itself, with a 422 naming the field.)
    """
    if request.blueprint in ("api", "health") or request.endpoint in (None, "static"):
        return None
    texts = [text for source in (request.args, request.form) for pair in source.items(multi=True)
             for text in pair]
    texts += [value for value in (request.view_args or {}).values() if isinstance(value, str)]
    if not any("\x00" in text for text in texts):
        return None
    from .views import error_response  # views imports this module

    return error_response(400, "The request was refused: it contains a NUL character (\\u0000), "
                               "which no field accepts.")


def _password_fingerprint(password_hash: str) -> str:
    """Changes whenever the password does, so a password change ends every other session."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def load_current_user() -> None:
    """Set ``g.user`` from the session; a disabled user or changed password logs the session out."""
    g.user = None
    user_id = session.get("user_id")
    if user_id is None or request.endpoint == "static":
        return
    user = db.session.get(User, user_id)
    if (user is not None and user.active and session.get("pw") == _password_fingerprint(user.password_hash)
            and session.get("gen") == user.session_generation):
        g.user = CurrentUser(user.id, user.username, user.role)
    else:
        session.clear()
    # End the read so a later write in this request can take SQLite's write lock up front.
    db.session.rollback()


def current_user() -> CurrentUser | None:
    """The logged-in user of this request, or ``None``."""
    return cast(CurrentUser | None, g.get("user"))


def actor_name() -> str:
    """The name recorded in events and the audit log for this request's user."""
    user = current_user()
    return user.username if user is not None else "anonymous"


def is_htmx() -> bool:
    """Whether htmx sent this request (and it is not a history restore, which wants a full page)."""
    return request.headers.get("HX-Request") == "true" and not request.headers.get("HX-History-Restore-Request")


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything pointing off-site becomes ``/``."""
    if not target:
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
    return cast(Response, redirect(url_for("auth.login", next=request.full_path.rstrip("?"))))


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


def _throttle() -> LoginThrottle:
    return cast(LoginThrottle, current_app.extensions["console_login_throttle"])


def _audit_login(username: str, outcome: str, detail: dict[str, Any] | None = None) -> None:
    begin_write()
    AsyncTaskService().audit(username[:255] or None, "login", "user", username[:255],
                             outcome=outcome, detail={"ip": request.remote_addr, **(detail or {})})
    db.session.commit()


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Show the login form; check the password, slowing down repeated failures."""
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        if current_user() is not None:
            return redirect(next_url)
        return render_template("login.html", next_url=next_url, username="", error=None)
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    throttle = _throttle()
    wait = throttle.wait_seconds(username[:255], request.remote_addr)
    db.session.rollback()
    if wait > 0:
        _audit_login(username, "throttled", {"wait_seconds": round(wait)})
        response = make_response(render_template(
            "login.html", next_url=next_url, username=username,
            error=gettext("Too many failed logins. Try again in %(seconds)s seconds.", seconds=int(wait) + 1)), 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    user = authenticate(username, password) if username and password else None
    if user is None:
        db.session.rollback()
        throttle.record_failure(request.remote_addr)
        _audit_login(username, "failed")
        return render_template("login.html", next_url=next_url, username=username,
                               error=gettext("Invalid username or password.")), 401
    identity = CurrentUser(user.id, user.username, user.role)
    fingerprint = _password_fingerprint(user.password_hash)
    generation = user.session_generation
    db.session.rollback()
    session.clear()  # a fresh session (and CSRF token) for the logged-in user
    session["user_id"] = identity.id
    session["pw"] = fingerprint
    session["gen"] = generation
    session.permanent = True
    begin_write()
    record_login(identity.id)
    AsyncTaskService().audit(identity.username, "login", "user", identity.username,
                             detail={"ip": request.remote_addr})
    db.session.commit()
    return redirect(next_url)


@bp.post("/logout")
def logout() -> Any:
    """End the session (POST only, with the CSRF token, so no link can log anyone out)."""
    user = current_user()
    if user is not None:
        begin_write()
        end_all_sessions(user.id)  # this session, every copy of it, and the user's others
        AsyncTaskService().audit(user.username, "logout", "user", user.username)
        db.session.commit()
    session.clear()
    return redirect(url_for("auth.login"))
