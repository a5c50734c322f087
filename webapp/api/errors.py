"""JSON errors for everything under ``/api``: ``{"error": {"code", "message", "field"?}}``.

Four layers make sure no HTML error page ever leaves ``/api``: a blueprint handler for errors
raised inside API views, an app-wide handler for routing errors (404, 405) that only answers
for ``/api`` paths, an after-request net that converts any non-JSON error response under
``/api`` that another app-wide handler may have produced, and a WSGI middleware around the
whole app for an exception that escapes Flask itself (a failing teardown, a middleware), which
would otherwise reach gunicorn and come back as its HTML page.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, cast

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..tasks.errors import (
    IdempotencyConflict,
    InvalidTransition,
    TaskError,
    TaskNotFound,
    ValidationError,
)

log = logging.getLogger(__name__)

# Machine-readable codes for HTTP errors raised by Flask/Werkzeug; others derive from the name.
HTTP_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_argument",
    500: "internal_error",
}
HTTP_ERROR_MESSAGES = {
    404: "no such API endpoint; see /api/openapi.json",
    405: "method not allowed on this endpoint; see the Allow header",
    500: "internal server error; the details are in the server log",
}
# Headers of an error response that must survive its conversion to JSON (Allow on 405, ...).
KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class ApiError(Exception):
    """An error the API answers with directly: HTTP status, stable code, message, optional field."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def is_api_path(path: str) -> bool:
    """Whether a request path belongs to the JSON API."""
    return path == "/api" or path.startswith("/api/")


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """The one shape of every API error."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    body.update({key: value for key, value in extra.items() if value is not None})
    response = jsonify(error=body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def status_for_task_error(exc: TaskError) -> int:
    """Engine errors to HTTP: not found 404, refused transition 409, bad input 422."""
    if isinstance(exc, TaskNotFound):
        return 404
    if isinstance(exc, InvalidTransition | IdempotencyConflict):
        return 409
    if isinstance(exc, ValidationError):
        return 422
    return 400


def _code_for_http(exc: HTTPException) -> str:
    status = exc.code or 500
    if status in HTTP_ERROR_CODES:
        return HTTP_ERROR_CODES[status]
    return re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")


def _http_error_json(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = HTTP_ERROR_MESSAGES.get(status) or exc.description or exc.name or "error"
    if status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = (f"request body is larger than the limit of {limit:,} bytes" if limit
                   else "request body is larger than the limit")
    headers = {name: value for name, value in exc.get_headers() if name in KEPT_HEADERS}
    return error_response(status, _code_for_http(exc), message, headers=headers)


def handle_api_error(exc: ApiError) -> Response:
    """An error raised on purpose by an API view or the token check."""
    return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)


def handle_task_error(exc: TaskError) -> Response:
    """An engine error raised inside an API view."""
    current = exc.current_status if isinstance(exc, InvalidTransition) else None
    return error_response(status_for_task_error(exc), exc.code, exc.message, exc.field,
                          current_status=current)


def handle_http_exception(exc: HTTPException) -> Any:
    """JSON for HTTP errors under /api; any other path keeps Flask's default response."""
    if not is_api_path(request.path):
        return exc
    if (exc.code or 500) >= 500:
        log.error("API %s %s failed: %s", request.method, request.path, exc)
    return _http_error_json(exc)


def json_error_safety_net(response: Response) -> Response:
    """Turn a non-JSON error response under /api (from some other handler) into the JSON shape."""
    if response.status_code < 400 or not is_api_path(request.path) or response.is_json:
        return response
    status = response.status_code
    code = HTTP_ERROR_CODES.get(status, "error")
    message = HTTP_ERROR_MESSAGES.get(status) or response.status.partition(" ")[2] or "error"
    headers = {name: response.headers[name] for name in KEPT_HEADERS if name in response.headers}
    return error_response(status, code, message, headers=headers)


class ApiJsonLastResort:
    """WSGI middleware: an exception escaping Flask on an ``/api`` path becomes the JSON 500.

    Where Flask propagates exceptions on purpose (``PROPAGATE_EXCEPTIONS``, testing, debug) they
    propagate. If the server already sent the headers, ``start_response`` re-raises, as WSGI asks.
    """

    def __init__(self, app: Flask, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.wsgi_app = wsgi_app

    def _propagates(self) -> bool:
        configured = self.app.config.get("PROPAGATE_EXCEPTIONS")
        return bool(configured) if configured is not None else self.app.testing or self.app.debug

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not is_api_path(environ.get("PATH_INFO", "")):
            return self.wsgi_app(environ, start_response)
        started = False

        def noting_start(*args: Any) -> Any:
            nonlocal started
            started = True
            return start_response(*args)

        try:
            return self.wsgi_app(environ, noting_start)
        except Exception:
            if self._propagates():
                raise
            log.exception("API %s %s failed outside Flask's error handlers",
                          environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            body = json.dumps({"error": {"code": HTTP_ERROR_CODES[500],
                                         "message": HTTP_ERROR_MESSAGES[500]}}).encode()
            start_response("500 INTERNAL SERVER ERROR",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")],
                           *((sys.exc_info(),) if started else ()))  # exc_info only to replace
            return [body]


def install_json_last_resort(app: Flask) -> None:
    """Wrap the app's WSGI callable (outermost) with ``ApiJsonLastResort``."""
    app.wsgi_app = ApiJsonLastResort(app, app.wsgi_app)  # type: ignore[method-assign]


def register_error_handlers(bp: Blueprint) -> None:
    """Attach every layer described in the module docstring to the API blueprint."""
    bp.register_error_handler(ApiError, handle_api_error)
    bp.register_error_handler(TaskError, handle_task_error)
    bp.register_error_handler(HTTPException, handle_http_exception)
    bp.app_errorhandler(HTTPException)(handle_http_exception)
    bp.after_app_request(json_error_safety_net)
    bp.record_once(lambda state: install_json_last_resort(cast(Flask, state.app)))
