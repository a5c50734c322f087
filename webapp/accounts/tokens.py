"""API bearer tokens: create (shown once), verify, revoke. Only a SHA-256 of a token is stored.

A token is 256 bits from ``secrets``, so a plain SHA-256 (not a slow password hash) is the
right tool: nobody can brute-force the preimage, and verifying stays a single indexed lookup.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..extensions import db
from ..tasks.audit import record_audit
from ..tasks.models import utcnow
from .models import ApiToken
from .users import begin_write

log = logging.getLogger(__name__)

TOKEN_PREFIX = "tdk_"
TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}\Z")
MAX_TOKEN_LENGTH = 200
# last_used_at is bookkeeping, not an audit trail: one write per token per minute is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# How long a process trusts a token it verified without asking the database again. A revoke
# in the same process drops the entry at once; another process (the CLI, another gunicorn
# worker, another host) may accept a revoked token for up to this long. Kept short on purpose.
VERIFIED_TOKEN_TTL = 2.0
VERIFIED_TOKEN_CACHE_LIMIT = 1000


# What a token may do: queue tasks; read tasks and task types; cancel, retry and resubmit.
SCOPES = ("submit", "read", "operate")
# Which tasks it sees and acts on: those it submitted itself, or every task.
REACH_OWN, REACH_ALL = "own", "all"
REACHES = (REACH_OWN, REACH_ALL)
DOMAIN_PATTERN = re.compile(r"^(?=.{1,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")
ADDRESS_PATTERN = re.compile(r"^[^@\s,]{1,64}@(?=.{1,253}\Z)[a-z0-9.-]+\Z")


class TokenError(ValueError):
    """A token cannot be created, changed or revoked as asked (bad name or value, duplicate, unknown)."""


@dataclass(frozen=True)
class TokenIdentity:
    """Who a verified bearer token belongs to (plain values, safe after the session ends)."""

    id: int
    name: str
    scopes: frozenset[str] = frozenset(SCOPES)
    reach: str = REACH_ALL
    allowed_recipients: tuple[str, ...] | None = None  # None: any recipient

    @property
    def principal(self) -> str:
        """How tasks this token submits record their submitter."""
        return f"token:{self.name}"

    @property
    def reaches_all(self) -> bool:
        """Whether the token sees and acts on every task, not only its own."""
        return self.reach == REACH_ALL


def parse_scopes(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """Scopes in their canonical order; ``None`` or nothing given means all of them."""
    if values is None:
        return SCOPES
    items = [part.strip().lower() for value in ([values] if isinstance(values, str) else values)
             for part in value.split(",") if part.strip()]
    unknown = sorted(set(items) - set(SCOPES))
    if unknown:
        raise TokenError(f"unknown scope {unknown[0]!r}; use {', '.join(SCOPES)}")
    if not items:
        raise TokenError(f"give at least one scope: {', '.join(SCOPES)}")
    return tuple(scope for scope in SCOPES if scope in items)


def parse_reach(value: str) -> str:
    """``own`` or ``all``."""
    reach = (value or "").strip().lower()
    if reach not in REACHES:
        raise TokenError(f"reach must be {' or '.join(REACHES)}, got {value!r}")
    return reach


def parse_recipients(values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """Allowed recipients: domains (``example.com``, subdomains included) and exact addresses."""
    if values is None:
        return None
    items = [part.strip().lower() for value in ([values] if isinstance(values, str) else values)
             for part in value.split(",") if part.strip()]
    for item in items:
        if not (DOMAIN_PATTERN.match(item) or ADDRESS_PATTERN.match(item)):
            raise TokenError(f"allowed recipient {item!r} is neither a domain nor an email address")
    if not items:
        raise TokenError("give at least one domain or address to allow (or none to allow any)")
    return tuple(dict.fromkeys(items))


def recipient_allowed(allowed: tuple[str, ...] | None, address: str) -> bool:
    """Whether ``address`` (an email address, or a bare host name) matches the allow-list."""
    if allowed is None:
        return True
    address = address.strip().lower()
    domain = address.rpartition("@")[2]
    return any(address == entry if "@" in entry else (domain == entry or domain.endswith("." + entry))
               for entry in allowed)


def _identity(row: Any) -> TokenIdentity:
    recipients = tuple(row.allowed_recipients.split(",")) if row.allowed_recipients else None
    return TokenIdentity(id=row.id, name=row.name, scopes=frozenset(parse_scopes(row.scopes)),
                         reach=row.reach, allowed_recipients=recipients)


def hash_token(token: str) -> str:
    """The stored form of a token: lowercase hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def validate_token_name(name: str) -> str:
    """A token name: 1-100 letters, digits, '.', '_', '@' or '-', starting with a letter or digit."""
    if not isinstance(name, str) or not TOKEN_NAME_PATTERN.match(name):
        raise TokenError(
            f"invalid token name {name!r}: use 1 to 100 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def create_token(name: str, actor: str | None = None, *, scopes: Iterable[str] | str | None = None,
                 reach: str = REACH_OWN, allowed_recipients: Iterable[str] | str | None = None,
                 notifications_per_hour: int | None = None) -> tuple[ApiToken, str]:
    """Store a new token under ``name``; return the row and the secret (never stored, shown once).

    A new token has every scope unless ``scopes`` narrows them, and reaches only the tasks it
    submits unless ``reach="all"`` is granted explicitly.
    """
    validate_token_name(name)
    settings = _checked_settings(scopes, reach, allowed_recipients, notifications_per_hour)
    begin_write()  # SQLite: read then write in one transaction that a worker's write cannot refuse
    existing = db.session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if existing is not None:
        state = "revoked" if existing.revoked_at is not None else "active"
        db.session.rollback()
        raise TokenError(f"a token named {name!r} already exists ({state}); pick another name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(secret), created_at=utcnow(), **settings)
    db.session.add(row)
    if actor is not None:
        _audit(actor, "token.create", name, detail=_described(settings))
    try:
        db.session.commit()
    except IntegrityError:  # another process created the same name a moment ago
        db.session.rollback()
        raise TokenError(f"a token named {name!r} already exists; pick another name") from None
    return row, secret


def _checked_settings(scopes: Iterable[str] | str | None, reach: str,
                      allowed_recipients: Iterable[str] | str | None,
                      notifications_per_hour: int | None) -> dict[str, Any]:
    """Column values of a token's permissions, every one checked (``TokenError`` otherwise)."""
    if notifications_per_hour is not None and (isinstance(notifications_per_hour, bool)
                                               or not 0 <= notifications_per_hour <= 1_000_000):
        raise TokenError("notifications per hour must be a whole number from 0 to 1000000")
    recipients = parse_recipients(allowed_recipients)
    return {"scopes": ",".join(parse_scopes(scopes)), "reach": parse_reach(reach),
            "allowed_recipients": ",".join(recipients) if recipients is not None else None,
            "notifications_per_hour": notifications_per_hour}


def _described(settings: dict[str, Any]) -> dict[str, Any]:
    """A token's permissions as the audit log records them."""
    return {key: value for key, value in settings.items() if value is not None}


UNCHANGED: Any = object()


def update_token(name: str, actor: str | None = None, *, scopes: Any = UNCHANGED, reach: Any = UNCHANGED,
                 allowed_recipients: Any = UNCHANGED, notifications_per_hour: Any = UNCHANGED) -> ApiToken:
    """Change an active token's scopes, reach, allowed recipients or notification limit.

    Every process sees the change within ``VERIFIED_TOKEN_TTL`` seconds (this one at once).
    """
    begin_write()
    row = db.session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None or row.revoked_at is not None:
        db.session.rollback()
        raise TokenError(f"no active token named {name!r}")
    current_recipients = row.allowed_recipients.split(",") if row.allowed_recipients else None
    settings = _checked_settings(
        row.scopes if scopes is UNCHANGED else scopes, row.reach if reach is UNCHANGED else reach,
        current_recipients if allowed_recipients is UNCHANGED else allowed_recipients,
        row.notifications_per_hour if notifications_per_hour is UNCHANGED else notifications_per_hour)
    for key, value in settings.items():
        setattr(row, key, value)
    if actor is not None:
        _audit(actor, "token.update", name, detail=_described(settings))
    db.session.commit()
    _verified_cache().forget(row.token_hash)
    return row


def revoke_token(name: str, actor: str | None = None) -> ApiToken:
    """Mark the named token revoked; it stops working at once. Unknown or revoked: TokenError."""
    begin_write()
    row = db.session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if row is None:
        db.session.rollback()
        raise TokenError(f"no token named {name!r}")
    if row.revoked_at is not None:
        db.session.rollback()
        raise TokenError(f"token {name!r} was already revoked at {row.revoked_at.isoformat()}")
    row.revoked_at = utcnow()
    if actor is not None:
        _audit(actor, "token.revoke", name)
    db.session.commit()
    _verified_cache().forget(row.token_hash)
    return row


def list_tokens() -> list[ApiToken]:
    """Every token, newest first (hashes only; the secrets are not recoverable)."""
    return list(db.session.scalars(select(ApiToken).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())))


def verify_token(secret: str) -> TokenIdentity | None:
    """The identity behind an active token, or ``None``. Stamps ``last_used_at`` at most once a minute.

    Ends its own transaction before returning, so the caller's writes start a fresh one (on
    SQLite that lets the service take the write lock up front instead of upgrading a read).
    """
    if not secret or len(secret) > MAX_TOKEN_LENGTH:
        return None
    row = db.session.execute(
        select(ApiToken.id, ApiToken.name, ApiToken.last_used_at, ApiToken.scopes, ApiToken.reach,
               ApiToken.allowed_recipients)
        .where(ApiToken.token_hash == hash_token(secret), ApiToken.revoked_at.is_(None))
    ).first()
    db.session.rollback()
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
        _stamp_last_used(row.id, now)
    return _identity(row)


class VerifiedTokenCache:
    """Tokens this process verified in the last ``VERIFIED_TOKEN_TTL`` seconds, by SHA-256.

    Only successful verifications are kept (at most ``VERIFIED_TOKEN_CACHE_LIMIT``), so
    guessing secrets cannot grow it; a refused token is looked up in the database every time.
    """

    def __init__(self, ttl: float = VERIFIED_TOKEN_TTL) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, TokenIdentity]] = {}
        self._lock = threading.Lock()

    def get(self, token_hash: str) -> TokenIdentity | None:
        """The identity cached for this hash, or ``None`` when absent or expired."""
        entry = self._entries.get(token_hash)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, token_hash: str, identity: TokenIdentity) -> None:
        """Remember a verified token until the TTL runs out."""
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= VERIFIED_TOKEN_CACHE_LIMIT:
                self._entries = {key: value for key, value in self._entries.items() if value[0] > now}
                if len(self._entries) >= VERIFIED_TOKEN_CACHE_LIMIT:
                    self._entries.clear()
            self._entries[token_hash] = (now + self.ttl, identity)

    def forget(self, token_hash: str) -> None:
        """Drop a token (revoked in this process): its next use asks the database."""
        with self._lock:
            self._entries.pop(token_hash, None)


def _verified_cache() -> VerifiedTokenCache:
    cache = current_app.extensions.get("api_token_cache")
    if cache is None:
        cache = current_app.extensions.setdefault("api_token_cache", VerifiedTokenCache())
    return cache  # type: ignore[no-any-return]


def verify_token_cached(secret: str) -> TokenIdentity | None:
    """``verify_token`` for the API's hot path: a token verified in the last ``VERIFIED_TOKEN_TTL``
    seconds in this process is accepted without a database round trip.

    A revoke through ``revoke_token`` in this process takes effect at once; a revoke made by
    another process takes effect here within ``VERIFIED_TOKEN_TTL`` seconds.
    """
    if not secret or len(secret) > MAX_TOKEN_LENGTH:
        return None
    token_hash = hash_token(secret)
    cache = _verified_cache()
    identity = cache.get(token_hash)
    if identity is not None:
        return identity
    identity = verify_token(secret)
    if identity is not None:
        cache.put(token_hash, identity)
    return identity


def _stamp_last_used(token_id: int, now: datetime) -> None:
    """Best effort: a busy database must not turn a valid request into an error."""
    session = db.session
    try:
        if session.get_bind().dialect.name == "sqlite":
            session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id,
                   or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < now - LAST_USED_RESOLUTION))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    except SQLAlchemyError:
        session.rollback()
        log.warning("could not record last use of API token %s", token_id, exc_info=True)


def _audit(actor: str, action: str, name: str, outcome: str = "ok", detail: dict | None = None) -> None:
    record_audit(actor, action, "api_token", name, outcome=outcome, detail=detail)


def audit_refusal(actor: str, action: str, name: str, reason: str) -> None:
    """Record a refused token change (bad name, duplicate, unknown) in the audit log."""
    _audit(actor, action, name, outcome="refused", detail={"reason": reason})
    db.session.commit()
