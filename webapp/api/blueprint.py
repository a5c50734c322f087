"""The API's blueprint object, alone in its module so views can import it without a cycle."""

from __future__ import annotations

from flask import Blueprint

from ..extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api")
# Bearer tokens, not cookies, authenticate API calls, so there is no CSRF to defend against.
csrf.exempt(bp)
