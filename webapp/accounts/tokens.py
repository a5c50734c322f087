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
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..extensions import db
from ..tasks.audit import record_audit
from ..tasks.models import utcnow
from .models import ApiToken

log = logging.getLogger(__name__)

TOKEN_PREFIX = "tdk_"
TOKEN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MAX_TOKEN_LENGTH = 200
# last_used_at is bookkeeping, not an audit trail: one write per token per minute is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# How long a process trusts a token it verified without asking the database again. A revoke
# in the same process drops the entry at once; another process (the CLI, another gunicorn
# worker, another host) may accept a revoked token for up to this long. Kept short on purpose.
VERIFIED_TOKEN_TTL = 2.0
VERIFIED_TOKEN_CACHE_LIMIT = 1000


class TokenError(ValueError):
    """A token cannot be created or revoked as asked (bad name, duplicate, unknown)."""


@dataclass(frozen=True)
class TokenIdentity:
    """Who a verified bearer token belongs to (plain values, safe after the session ends)."""

    id: int
    name: str


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


def create_token(name: str, actor: str | None = None) -> tuple[ApiToken, str]:
    """Store a new token under ``name``; return the row and the secret (never stored, shown once)."""
    validate_token_name(name)
    existing = db.session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if existing is not None:
        state = "revoked" if existing.revoked_at is not None else "active"
        db.session.rollback()
        raise TokenError(f"a token named {name!r} already exists ({state}); pick another name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(secret), created_at=utcnow())
    db.session.add(row)
    if actor is not None:
        _audit(actor, "token.create", name)
    try:
        db.session.commit()
    except IntegrityError:  # another process created the same name a moment ago
        db.session.rollback()
        raise TokenError(f"a token named {name!r} already exists; pick another name") from None
    return row, secret


def revoke_token(name: str, actor: str | None = None) -> ApiToken:
    """Mark the named token revoked; it stops working at once. Unknown or revoked: TokenError."""
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
        select(ApiToken.id, ApiToken.name, ApiToken.last_used_at)
        .where(ApiToken.token_hash == hash_token(secret), ApiToken.revoked_at.is_(None))
    ).first()
    db.session.rollback()
    if row is None:
        return None
    now = utcnow()
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
        _stamp_last_used(row.id, now)
    return TokenIdentity(id=row.id, name=row.name)


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
