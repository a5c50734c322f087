"""The user's own account: change their password (every user, whatever their role).

The new password must pass the policy (``accounts.passwords``); the current one must be
given. Every other session of the user ends; this one goes on.
"""

from __future__ import annotations

from flask import Response, flash, make_response, redirect, render_template, request, url_for
from flask_babel import gettext

from ..accounts.login import identity_of
from ..accounts.passwords import MIN_PASSWORD_LENGTH
from ..accounts.users import change_own_password
from ..tasks.errors import ValidationError
from .auth import protected_blueprint
from .sessions import current_user, keep_session_after_password_change

bp = protected_blueprint("account", __name__, url_prefix="/account")


def _password_page(status: int = 200, error: str | None = None, error_field: str | None = None) -> Response:
    return make_response(render_template("account_password.html", error=error, error_field=error_field,
                                         min_length=MIN_PASSWORD_LENGTH), status)


@bp.get("/password")
def password_form() -> Response:
    """The form to change one's own password."""
    return _password_page()


@bp.post("/password")
def change_password() -> Response:
    """Change one's own password (the current one required); a refusal says which field and why."""
    user = current_user()
    assert user is not None  # the blueprint's login guard ran
    new_password = request.form.get("password", "")
    if new_password != request.form.get("password_confirm", ""):
        return _password_page(422, gettext("The two new passwords differ."), "password_confirm")
    try:
        changed = change_own_password(user.id, request.form.get("current_password", ""), new_password)
    except ValidationError as exc:
        return _password_page(422, exc.message, exc.field)
    keep_session_after_password_change(identity_of(changed))
    flash(gettext("Your password was changed. Your other sessions have ended."), "info")
    return make_response(redirect(url_for("account.password_form")), 303)
