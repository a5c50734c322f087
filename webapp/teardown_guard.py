"""Teardown callbacks cannot turn a finished answer into an error page.

Flask runs the teardown callbacks (Flask-SQLAlchemy's ``session.remove()`` among them) after the
view has answered and the response has been handed to the WSGI server, outside every error
handler. If one raises, the exception leaves ``wsgi_app`` and gunicorn replaces the finished
answer with its own HTML 500. It happens for real: a session whose connection was killed
(``pg_terminate_backend``, a failover) fails its closing ROLLBACK. The answer is already right
by then (a ROLLBACK at teardown only ends a transaction the view did not commit), so a failing
callback is logged, the session is dropped, and the answer stands.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask

from .extensions import db

log = logging.getLogger(__name__)

GUARDED_MARK = "_taskdeck_teardown_guarded"


def _guarded(callback: Callable[[BaseException | None], Any]) -> Callable[[BaseException | None], Any]:
    if getattr(callback, GUARDED_MARK, False):
        return callback

    @functools.wraps(callback)
    def guarded(exc: BaseException | None) -> Any:
        try:
            return callback(exc)
        except Exception:
            log.warning("teardown %s failed after the answer was made; the answer stands",
                        getattr(callback, "__qualname__", callback), exc_info=True)
            _forget_session()
            return None

    setattr(guarded, GUARDED_MARK, True)
    return guarded


def _forget_session() -> None:
    """Drop this context's session without touching its (dead) connection again."""
    try:
        db.session.registry.clear()
    except Exception:  # no app context, or the registry is already gone: nothing to forget
        log.debug("no session to forget", exc_info=True)


def guard_teardowns(app: Flask) -> None:
    """Wrap every teardown callback registered on ``app`` so far (call after the extensions)."""
    app.teardown_appcontext_funcs[:] = [_guarded(func) for func in app.teardown_appcontext_funcs]
    for funcs in app.teardown_request_funcs.values():
        funcs[:] = [_guarded(func) for func in funcs]
