"""Operations endpoints, outside the console's login: liveness, readiness and Prometheus metrics.

* ``/healthz``: the process answers (no dependency is touched). Always open.
* ``/readyz``: each dependency checked now, one key each: ``database`` (``SELECT 1``), ``redis``
  (PING, when ``REDIS_URL`` is set) and ``smtp`` (the server's greeting, when ``MAIL_SERVER`` is
  set); ``"ok"``, ``"not configured"`` or ``"error: ..."``. 200 when every configured one is
  ok, else 503. Always open: it names no host, user or secret.
* ``/metrics``: see ``webapp/metrics.py``. Open unless ``ASYNC_TASK_METRICS_TOKEN`` is set;
  then it needs ``Authorization: Bearer <token>`` (401 otherwise).

All three live in this ``health`` blueprint, which no login hook covers.
"""

from __future__ import annotations

import hmac
import smtplib
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import text

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
    body = {"status": "ok" if ready else "unavailable", **checks, "checks": checks}
    return jsonify(body), (200 if ready else 503)


@bp.get("/metrics")
def metrics() -> Any:
    """Prometheus text exposition of the task, notification and worker figures."""
    from .metrics import render_metrics

    token = current_app.config.get("ASYNC_TASK_METRICS_TOKEN")
    if token and not _bearer_matches(token):
        return Response("metrics need Authorization: Bearer <ASYNC_TASK_METRICS_TOKEN>\n", status=401,
                        mimetype="text/plain", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    try:
        body = render_metrics()
    finally:
        db.session.remove()
    return Response(body, mimetype=None, content_type=EXPOSITION_CONTENT_TYPE,
                    headers={"Cache-Control": "no-store"})


def _bearer_matches(token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


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
