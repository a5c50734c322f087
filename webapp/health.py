"""Operations endpoints, outside the console's login: liveness, readiness and Prometheus metrics.

* ``/healthz``: the process answers (no dependency is touched). Always open.
* ``/readyz``: each dependency checked now, one key each: ``database`` (``SELECT 1``), ``redis``
  (PING, when ``REDIS_URL`` is set) and ``smtp`` (the server's greeting, when ``MAIL_SERVER`` is
  set). 200 when every configured one is ok, else 503. Anyone gets the states only (``"ok"``,
  ``"error"``, ``"not configured"``); a caller with a token (``ASYNC_TASK_METRICS_TOKEN`` or a
  valid API token) also gets the error's type (``"error: ConnectionRefusedError"``).
* ``/metrics``: see ``webapp/metrics.py``. Needs ``Authorization: Bearer
  <ASYNC_TASK_METRICS_TOKEN>`` unless ``ASYNC_TASK_METRICS_PUBLIC=true`` opens it explicitly;
  with neither set it answers 401 saying so. Answers come from a per-process copy at most
  ``ASYNC_TASK_METRICS_CACHE_SECONDS`` old, so a scrape loop costs no table scan per request.

All three live in this ``health`` blueprint, which no login hook covers.
"""

from __future__ import annotations

import hmac
import smtplib
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .accounts.tokens import verify_token_cached
from .extensions import db

bp = Blueprint("health", __name__)

NOT_CONFIGURED = "not configured"
# A readiness probe must answer before the load balancer's own timeout: each check gets this long.
CHECK_TIMEOUT = 2.0
# The classic text format, which every Prometheus server (2.x and 3.x) reads.
EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@bp.get("/healthz")
def healthz() -> Any:
    """The process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Any:
    """Dependencies reachable: the database and, when configured, Redis and the SMTP server."""
    checks = {"database": _check_database(), "redis": _check_redis(), "smtp": _check_smtp()}
    ready = all(value in ("ok", NOT_CONFIGURED) for value in checks.values())
    if not _caller_has_a_token():
        # Anyone may probe readiness; what failed and how is for operators (issue 10 item 24).
        checks = {name: value.partition(":")[0] for name, value in checks.items()}
    body = {"status": "ok" if ready else "unavailable", **checks, "checks": checks}
    return jsonify(body), (200 if ready else 503)


@bp.get("/metrics")
def metrics() -> Any:
    """Prometheus text exposition of the task, notification and worker figures."""
    config = current_app.config
    token = config.get("ASYNC_TASK_METRICS_TOKEN")
    if not config.get("ASYNC_TASK_METRICS_PUBLIC"):
        if not token:
            return _metrics_refused("metrics are closed: set ASYNC_TASK_METRICS_TOKEN (and send "
                                    "Authorization: Bearer <token>) or ASYNC_TASK_METRICS_PUBLIC=true\n")
        if not _bearer_matches(token):
            return _metrics_refused("metrics need Authorization: Bearer <ASYNC_TASK_METRICS_TOKEN>\n")
    # prometheus_client is imported with it: only this view needs it, not every start.
    from .metrics import cached_metrics

    try:
        body = cached_metrics(float(config["ASYNC_TASK_METRICS_CACHE_SECONDS"]))
    finally:
        db.session.remove()
    return Response(body, mimetype=None, content_type=EXPOSITION_CONTENT_TYPE,
                    headers={"Cache-Control": "no-store"})


def _metrics_refused(message: str) -> Response:
    return Response(message, status=401, mimetype="text/plain",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return given.strip()


def _bearer_matches(token: str) -> bool:
    given = _bearer_token()
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def _caller_has_a_token() -> bool:
    """The request carries the metrics token or a valid (unrevoked) API token."""
    given = _bearer_token()
    if given is None:
        return False
    metrics_token = current_app.config.get("ASYNC_TASK_METRICS_TOKEN")
    if metrics_token and hmac.compare_digest(given.encode(), metrics_token.encode()):
        return True
    try:
        return verify_token_cached(given) is not None
    except SQLAlchemyError:  # the database is down: readiness says so; no detail without proof
        return False
    finally:
        db.session.remove()


def _check_database() -> str:
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    finally:
        db.session.remove()


def _check_redis() -> str:
    locks = current_app.extensions["async_task"].locks
    if locks is None:
        return NOT_CONFIGURED
    try:
        return "ok" if locks.ping() else "error: no answer to PING"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


def _check_smtp() -> str:
    """Connect and read the server's greeting (``MAIL_USE_SSL``: over TLS); send no mail."""
    config = current_app.config
    host = config.get("MAIL_SERVER")
    if not host:
        return NOT_CONFIGURED
    port = int(config.get("MAIL_PORT") or (465 if config.get("MAIL_USE_SSL") else 25))
    timeout = min(CHECK_TIMEOUT, float(config.get("MAIL_TIMEOUT") or CHECK_TIMEOUT))
    client_class = smtplib.SMTP_SSL if config.get("MAIL_USE_SSL") else smtplib.SMTP
    try:
        client = client_class(host, port, timeout=timeout)
    except (OSError, smtplib.SMTPException) as exc:
        return f"error: {type(exc).__name__}" + (f" ({exc.strerror})" if isinstance(exc, OSError)
                                                  and exc.strerror else "")
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):  # a goodbye that fails changes nothing
        client.close()
    return "ok"
