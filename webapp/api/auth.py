"""Bearer-token authentication for the JSON API (every call except the OpenAPI document)."""

from __future__ import annotations

from flask import g, request

from ..accounts.tokens import TokenIdentity, verify_token_cached
from .errors import ApiError

# Endpoints anyone may call: the API's own description, so tools can read it without a secret.
PUBLIC_ENDPOINTS = frozenset({"api.openapi_document"})
CHALLENGE = 'Bearer realm="api"'
# The scope each call needs (flask tokens create NAME --scope ...). Endpoints not listed here
# (added later) need "read" to read and "operate" to change anything.
ENDPOINT_SCOPES = {
    "api.submit_task": "submit",
    "api.submit_task_batch": "submit",
    "api.workflows.submit_workflow": "submit",
    "api.list_tasks": "read",
    "api.get_task": "read",
    "api.list_task_types": "read",
    "api.cancel_task": "operate",
    "api.retry_task": "operate",
    "api.resubmit_task": "operate",
}


def scope_needed(endpoint: str | None, method: str) -> str:
    """The scope a call to ``endpoint`` with ``method`` needs."""
    if endpoint in ENDPOINT_SCOPES:
        return ENDPOINT_SCOPES[endpoint]
    return "read" if method in ("GET", "HEAD") else "operate"


def bearer_token_from_header(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None`` if absent or another scheme."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_api_token() -> None:
    """Before every API call: a valid, unrevoked bearer token, or 401 with a JSON error."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    token = bearer_token_from_header(request.headers.get("Authorization"))
    if token is None:
        raise ApiError(401, "unauthorized",
                       "missing bearer token: send 'Authorization: Bearer <token>' "
                       "(create one with 'flask tokens create NAME')",
                       headers={"WWW-Authenticate": CHALLENGE})
    # Cached for at most VERIFIED_TOKEN_TTL (2 s) per process; see verify_token_cached.
    identity = verify_token_cached(token)
    if identity is None:
        raise ApiError(401, "invalid_token", "the bearer token is not valid or has been revoked",
                       headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'})
    g.api_token = identity
    scope = scope_needed(request.endpoint, request.method)
    if scope not in identity.scopes:
        raise ApiError(403, "forbidden",
                       f"token {identity.name!r} lacks the {scope!r} scope this call needs "
                       f"(it has: {', '.join(sorted(identity.scopes))}); an admin grants scopes with "
                       f"'flask tokens update {identity.name} --scope {scope}'")


def optional_token() -> TokenIdentity | None:
    """The identity of a valid bearer token on a public endpoint's request, or ``None``."""
    token = bearer_token_from_header(request.headers.get("Authorization"))
    return verify_token_cached(token) if token is not None else None


def current_token() -> TokenIdentity:
    """The identity of the token that authenticated this request."""
    identity = g.get("api_token")
    if identity is None:  # a view outside require_api_token's reach: a programming error
        raise RuntimeError("API view called without a verified token")
    return identity


def api_actor() -> str:
    """How API actions appear in the audit log and task timelines."""
    return f"api:{current_token().name}"
