"""Sending one notification as a webhook: a signed POST to a globally routable address only.

The body is the task's JSON, frozen when the task ended; ``X-Taskdeck-Signature`` is
``sha256=`` + HMAC-SHA256(secret, ``timestamp.body``), so a receiver can check both origin and
freshness (``verify_webhook_signature`` is what it runs). The host is resolved once, every
address it resolves to is checked, and the connection goes to exactly that address, so DNS
rebinding cannot reach a refused one.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from flask import current_app

from ..config import engine_settings
from ..tasks.errors import ValidationError
from .addresses import validate_webhook_url
from .mail import NOTIFICATION_ID_HEADER, TASK_ID_HEADER
from .outbox import ClaimedNotification, DeliveryError

MAX_RESPONSE_SNIPPET = 500
SIGNATURE_HEADER = "X-Taskdeck-Signature"
TIMESTAMP_HEADER = "X-Taskdeck-Timestamp"


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + HMAC-SHA256(secret, ``timestamp.body``)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook_signature(secret: str, timestamp: str, body: bytes, signature: str,
                             tolerance: float = 300.0, now: float | None = None) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (no replays)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except (TypeError, ValueError):
        return False
    return age <= tolerance and hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


def refused_address_reason(address: str) -> str | None:
    """Why a webhook may not go to this IP address (anything not globally routable), or None.

    An IPv6 address that carries an IPv4 address (IPv4-mapped, 6to4, Teredo) is judged by the
    IPv4 address it carries, since that is where its packets end up.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        for form, embedded in _embedded_ipv4(ip):
            reason = refused_address_reason(str(embedded))
            if reason is not None:
                return f"{reason} (inside the {form} address {ip})"
        if ip.is_site_local:
            return f"site-local address {ip}"
    # Most specific first: Python also counts loopback and link-local ranges as "private".
    for label, flag in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                        ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                        ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"{label} address {ip}"
    if not ip.is_global:
        return f"non-public address {ip}"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped", ip.ipv4_mapped))
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [("Teredo", server), ("Teredo", client)]
    return found


def resolve_webhook_target(host: str, port: int, allow_private: bool) -> tuple[Any, Any]:
    """Resolve ``host`` and check every address; (family, sockaddr) to connect to.

    The connection then goes to exactly this address, so a DNS answer that changes between
    the check and the connect (rebinding) cannot reach a refused address.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DeliveryError(f"cannot resolve webhook host {host!r}: {exc}") from None
    if not infos:
        raise DeliveryError(f"webhook host {host!r} has no address")
    if not allow_private:
        for info in infos:
            reason = refused_address_reason(str(info[4][0]))
            if reason is not None:
                raise DeliveryError(
                    f"webhook host {host!r} resolves to a {reason}; refused (set "
                    f"ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE=true to allow private targets)", skip=True)
    return infos[0][0], infos[0][4]


def _pinned_connection(scheme: str, host: str, port: int, family: Any, sockaddr: Any,
                       timeout: float) -> http.client.HTTPConnection:
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def connect_to_checked_address(_address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    # http.client connects through this attribute; TLS still verifies the certificate of ``host``.
    connection._create_connection = connect_to_checked_address  # type: ignore[attr-defined]
    return connection


def send_webhook(note: ClaimedNotification) -> None:
    """POST the task JSON, signed; any non-2xx answer or network error is retried."""
    settings = engine_settings(current_app)
    secret = settings.webhook_secret
    if not secret:
        raise DeliveryError("ASYNC_TASK_WEBHOOK_SECRET is not set; unsigned webhooks are never sent",
                            permanent=True)
    try:
        url = validate_webhook_url(note.recipient, field="webhook URL")
    except ValidationError as exc:
        raise DeliveryError(exc.message, skip=True) from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    family, sockaddr = resolve_webhook_target(host, port, settings.webhook_allow_private)
    timeout = settings.notify_timeout
    body = note.content.encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Taskdeck-Webhook/1.0",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign_webhook(secret, timestamp, body),
        NOTIFICATION_ID_HEADER: str(note.id),
        TASK_ID_HEADER: str(note.task_id),
        "X-Taskdeck-Attempt": str(note.attempts),
    }
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = _pinned_connection(parts.scheme, host, port, family, sockaddr, timeout)
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        snippet = response.read(MAX_RESPONSE_SNIPPET)
        status, reason = response.status, response.reason
    except TimeoutError:
        raise DeliveryError(f"webhook {host}:{port}: timed out after {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"webhook {host}:{port}: {type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
    if not 200 <= status < 300:
        text = snippet.decode("utf-8", "replace").strip()
        raise DeliveryError(f"webhook answered HTTP {status} {reason}" + (f": {text}" if text else ""))
