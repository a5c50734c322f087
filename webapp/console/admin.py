"""Admin pages: console users and API tokens (admin role only). Every change is audited."""

from __future__ import annotations

from typing import Any

from flask import Response, flash, make_response, redirect, render_template, request, url_for
from flask_babel import gettext

from ..accounts import tokens as api_tokens
from ..accounts.models import Role
from ..accounts.passwords import MIN_PASSWORD_LENGTH
from ..accounts.users import create_user, list_users, reset_password, set_user_active, set_user_role
from ..tasks.errors import ValidationError
from .auth import protected_blueprint, requires
from .sessions import actor_name, current_user

bp = protected_blueprint("admin", __name__, url_prefix="/admin")


def _users_page(status: int = 200, form: dict[str, str] | None = None, error: str | None = None) -> Response:
    return make_response(render_template("admin_users.html", users=list_users(), roles=[r.value for r in Role],
                                         form=form or {}, error=error, min_length=MIN_PASSWORD_LENGTH), status)


@bp.get("/users")
@requires(Role.ADMIN)
def users() -> Response:
    """Console users and their roles, with a form to add one."""
    return _users_page()


@bp.post("/users")
@requires(Role.ADMIN)
def create_user_view() -> Any:
    """Create a console user; a bad field re-shows the form with what was typed (not the password)."""
    form = {"username": request.form.get("username", ""), "role": request.form.get("role", "viewer")}
    try:
        user = create_user(form["username"], request.form.get("password", ""), form["role"], actor=actor_name())
    except ValidationError as exc:
        return _users_page(422, form, exc.message)
    flash(gettext("User %(name)s created with role %(role)s.", name=user.username, role=user.role), "info")
    return redirect(url_for("admin.users"), 303)


@bp.post("/users/<username>/role")
@requires(Role.ADMIN)
def change_role(username: str) -> Any:
    """Change a user's role (not your own, so the last admin cannot lock everyone out)."""
    user = current_user()
    if user is not None and user.username == username:
        return _users_page(409, error=gettext("You cannot change your own role."))
    try:
        changed = set_user_role(username, request.form.get("role", ""), actor=actor_name())
    except ValidationError as exc:
        return _users_page(422, error=exc.message)
    flash(gettext("%(name)s is now %(role)s.", name=changed.username, role=changed.role), "info")
    return redirect(url_for("admin.users"), 303)


@bp.post("/users/<username>/active")
@requires(Role.ADMIN)
def change_active(username: str) -> Any:
    """Enable or disable a user's login (not your own)."""
    user = current_user()
    if user is not None and user.username == username:
        return _users_page(409, error=gettext("You cannot disable yourself."))
    active = request.form.get("active") == "1"
    try:
        changed = set_user_active(username, active, actor=actor_name())
    except ValidationError as exc:
        return _users_page(422, error=exc.message)
    flash(gettext("%(name)s enabled.", name=changed.username) if active
          else gettext("%(name)s disabled.", name=changed.username), "info")
    return redirect(url_for("admin.users"), 303)


@bp.post("/users/<username>/password")
@requires(Role.ADMIN)
def reset_password_view(username: str) -> Any:
    """Set another user's password (admin); their sessions end. Your own: the account page."""
    user = current_user()
    if user is not None and user.username == username:
        return _users_page(409, error=gettext("Change your own password on your account page."))
    try:
        changed = reset_password(username, request.form.get("password", ""), actor=actor_name())
    except ValidationError as exc:
        return _users_page(422, error=exc.message)
    flash(gettext("Password of %(name)s set; their sessions have ended.", name=changed.username), "info")
    return redirect(url_for("admin.users"), 303)


def _tokens_page(status: int = 200, secret: str | None = None, secret_name: str | None = None,
                 error: str | None = None) -> Response:
    return make_response(render_template("admin_tokens.html", tokens=api_tokens.list_tokens(), secret=secret,
                                         secret_name=secret_name, error=error), status)


@bp.get("/tokens")
@requires(Role.ADMIN)
def tokens() -> Response:
    """API tokens (names and use only; secrets are never stored)."""
    return _tokens_page()


@bp.post("/tokens")
@requires(Role.ADMIN)
def create_token() -> Response:
    """Create an API token and show its secret once, on this response only."""
    name = (request.form.get("name") or "").strip()
    try:
        row, secret = api_tokens.create_token(name, actor=actor_name())
    except api_tokens.TokenError as exc:
        return _tokens_page(422, error=str(exc))
    return _tokens_page(201, secret=secret, secret_name=row.name)


@bp.post("/tokens/<name>/revoke")
@requires(Role.ADMIN)
def revoke_token(name: str) -> Any:
    """Revoke an API token; it stops working at once."""
    try:
        api_tokens.revoke_token(name, actor=actor_name())
    except api_tokens.TokenError as exc:
        return _tokens_page(409, error=str(exc))
    flash(gettext("Token %(name)s revoked.", name=name), "info")
    return redirect(url_for("admin.tokens"), 303)
