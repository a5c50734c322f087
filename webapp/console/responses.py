"""How console views answer: the full page or the htmx fragment, error pages, no caching.

One ``render()`` serves both a page and, for htmx, the fragment named by the ``HX-Target``
header (templates in ``templates/partials/``). Errors become a page, or for htmx a message
swapped into the page's message area. Every console blueprint registers the same handlers
through ``register_error_pages``.
"""

from __future__ import annotations

from flask import Blueprint, Response, make_response, render_template, request
from flask_babel import gettext
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from ..tasks.errors import InvalidTransition, TaskError, TaskNotFound


def is_htmx() -> bool:
    """Whether htmx sent this request (and it is not a history restore, which wants a full page)."""
    return request.headers.get("HX-Request") == "true" and not request.headers.get("HX-History-Restore-Request")


def hx_target() -> str | None:
    """The id of the element htmx will swap, when htmx sent the request."""
    return request.headers.get("HX-Target") if is_htmx() else None


def render(full: str, fragments: dict[str, str], status: int = 200, **context: object) -> Response:
    """The full page, or the fragment htmx asked for by target id; always varies on those headers."""
    template = fragments.get(hx_target() or "", full)
    response = make_response(render_template(template, **context), status)
    response.headers["Vary"] = "HX-Request, HX-Target"
    return response


def htmx_message(message: str, level: str = "info", status: int = 200) -> Response:
    """A message for htmx, swapped into the page's message area whatever element asked."""
    response = make_response(render_template("partials/message.html", message=message, level=level), status)
    response.headers["HX-Retarget"] = "#messages"
    response.headers["HX-Reswap"] = "innerHTML"
    return response


def no_store(response: Response) -> Response:
    """Console pages show live state and secrets: never cache them (back button included)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def error_response(status: int, message: str) -> Response:
    """An error as a page, or for htmx as a message swapped into the page's message area."""
    if is_htmx():
        response = htmx_message(message, "error", status)
        response.headers["HX-Push-Url"] = "false"
        return response
    return make_response(render_template("error.html", status=status, message=message), status)


def handle_csrf_error(exc: CSRFError) -> Response:
    """A state-changing request without a valid CSRF token: refused, nothing changed."""
    return error_response(400, gettext("The request was refused: its security token is missing or expired. "
                                       "Reload the page and try again."))


def handle_http_error(exc: HTTPException) -> Response:
    """403, 404, 405 ... as a console page (or an htmx message)."""
    status = exc.code or 500
    messages = {403: (gettext("You are not allowed to do this: %(reason)s", reason=exc.description)
                      if exc.description else gettext("You are not allowed to do this.")),
                404: gettext("Not found.")}
    return error_response(status, messages.get(status, exc.description or exc.name))


def handle_task_error(exc: TaskError) -> Response:
    """Engine errors (bad id, refused transition) with their own message and status."""
    status = 404 if isinstance(exc, TaskNotFound) else 409 if isinstance(exc, InvalidTransition) else 400
    return error_response(status, exc.message)


def register_error_pages(bp: Blueprint) -> None:
    """The console's error answers and ``no-store`` on every response of ``bp``."""
    bp.register_error_handler(CSRFError, handle_csrf_error)
    bp.register_error_handler(HTTPException, handle_http_error)
    bp.register_error_handler(TaskError, handle_task_error)
    bp.after_request(no_store)
