"""The JSON API for applications (``/api``): bearer tokens, JSON errors, an OpenAPI document.

A thin blueprint over ``AsyncTaskService``; it holds no rule of the task state machine.
"""

from __future__ import annotations

from . import limits, views  # noqa: F401  (register their routes on bp)
from .auth import require_api_token
from .blueprint import bp
from .errors import register_error_handlers
from .exports import bp as exports_bp
from .parsing import refuse_oversized_body, refuse_unstorable_query_text
from .schedules import bp as schedules_bp
from .workflows import bp as workflows_bp

bp.register_blueprint(schedules_bp)  # /api/schedules: the hooks and error handlers below apply to it
bp.register_blueprint(workflows_bp)  # /api/workflows, likewise
bp.register_blueprint(exports_bp)  # /api/exports, likewise

bp.before_request(refuse_oversized_body)
bp.before_request(require_api_token)
bp.before_request(refuse_unstorable_query_text)
register_error_handlers(bp)

__all__ = ["bp"]
