"""The JSON API for applications (``/api``): bearer tokens, JSON errors, an OpenAPI document.

A thin blueprint over ``AsyncTaskService``; it holds no rule of the task state machine.
"""

from __future__ import annotations

from flask import Blueprint

from ..extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api")
# Bearer tokens, not cookies, authenticate API calls, so there is no CSRF to defend against.
csrf.exempt(bp)

from . import views  # noqa: E402,F401  (registers the routes on bp)
from .auth import require_api_token  # noqa: E402
from .errors import register_error_handlers  # noqa: E402
from .parsing import refuse_oversized_body  # noqa: E402
from .schedules import bp as schedules_bp  # noqa: E402

bp.register_blueprint(schedules_bp)  # /api/schedules: the hooks and error handlers below apply to it

bp.before_request(refuse_oversized_body)
bp.before_request(require_api_token)
register_error_handlers(bp)

__all__ = ["bp"]
