"""API tokens: stored hashed, verified, revoked, last use stamped; the ``flask tokens`` CLI."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import select, update

from webapp.accounts.models import ApiToken
from webapp.accounts.tokens import (
    TokenError,
    create_token,
    hash_token,
    list_tokens,
    revoke_token,
    verify_token,
)
from webapp.extensions import db
from webapp.tasks.models import AuditEntry, utcnow


def _auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _audit_rows(app: Flask, action: str) -> list[AuditEntry]:
    with app.app_context():
        rows = list(db.session.scalars(select(AuditEntry).where(AuditEntry.action == action)
                                        .order_by(AuditEntry.id)))
        db.session.expunge_all()
        return rows


def test_only_the_sha256_of_a_token_is_stored(app_ctx: Flask) -> None:
    row, secret = create_token("billing")
    assert secret.startswith("tdk_") and len(secret) > 40
    stored = db.session.scalars(select(ApiToken).where(ApiToken.name == "billing")).one()
    assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest() == hash_token(secret)
    assert secret not in (stored.name, stored.token_hash)
    assert stored.revoked_at is None and stored.last_used_at is None


def test_two_tokens_never_share_a_secret(app_ctx: Flask) -> None:
    secrets = {create_token(f"svc-{n}")[1] for n in range(5)}
    assert len(secrets) == 5


def test_verify_accepts_active_tokens_only(app_ctx: Flask) -> None:
    _, secret = create_token("reports")
    identity = verify_token(secret)
    assert identity is not None and identity.name == "reports"
    assert verify_token(secret + "x") is None
    assert verify_token("") is None
    assert verify_token("x" * 10_000) is None
    revoke_token("reports")
    assert verify_token(secret) is None


def test_last_used_is_stamped_at_most_once_a_minute(app_ctx: Flask) -> None:
    _, secret = create_token("poller")
    assert verify_token(secret) is not None
    first = db.session.scalars(select(ApiToken.last_used_at).where(ApiToken.name == "poller")).one()
    assert first is not None and abs((utcnow() - first).total_seconds()) < 60

    recent = utcnow() - timedelta(seconds=30)
    db.session.execute(update(ApiToken).where(ApiToken.name == "poller").values(last_used_at=recent))
    db.session.commit()
    verify_token(secret)
    unchanged = db.session.scalars(select(ApiToken.last_used_at).where(ApiToken.name == "poller")).one()
    assert abs((unchanged - recent).total_seconds()) < 0.001

    stale = utcnow() - timedelta(minutes=2)
    db.session.execute(update(ApiToken).where(ApiToken.name == "poller").values(last_used_at=stale))
    db.session.commit()
    verify_token(secret)
    refreshed = db.session.scalars(select(ApiToken.last_used_at).where(ApiToken.name == "poller")).one()
    assert refreshed > utcnow() - timedelta(seconds=10)


@pytest.mark.parametrize("name", ["", " ", "-leading-dash", "has space", "x" * 101, "semi;colon", "nul\x00"])
def test_bad_token_names_are_refused(app_ctx: Flask, name: str) -> None:
    with pytest.raises(TokenError, match="invalid token name"):
        create_token(name)
    assert list_tokens() == []


def test_duplicate_unknown_and_double_revocation_are_refused(app_ctx: Flask) -> None:
    create_token("dup")
    with pytest.raises(TokenError, match="already exists"):
        create_token("dup")
    with pytest.raises(TokenError, match="no token named"):
        revoke_token("ghost")
    revoke_token("dup")
    with pytest.raises(TokenError, match="already revoked"):
        revoke_token("dup")
    with pytest.raises(TokenError, match="already exists \\(revoked\\)"):
        create_token("dup")


def test_cli_create_prints_the_token_last_and_revoke_makes_it_401(app: Flask) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(args=["tokens", "create", "ci-bot"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert created.output.strip().splitlines()[-1] == secret
    assert secret.startswith("tdk_")

    client = app.test_client()
    assert client.get("/api/tasks", headers=_auth(secret)).status_code == 200

    listed = runner.invoke(args=["tokens", "list"])
    assert listed.exit_code == 0 and "ci-bot\tactive" in listed.output
    assert secret not in listed.output

    revoked = runner.invoke(args=["tokens", "revoke", "ci-bot"])
    assert revoked.exit_code == 0, revoked.output
    refused = client.get("/api/tasks", headers=_auth(secret))
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_token"
    assert "ci-bot\trevoked" in runner.invoke(args=["tokens", "list"]).output

    assert [(row.target_id, row.outcome) for row in _audit_rows(app, "token.create")] == [("ci-bot", "ok")]
    assert [(row.target_id, row.outcome) for row in _audit_rows(app, "token.revoke")] == [("ci-bot", "ok")]
    assert all(row.actor and row.actor.startswith("cli") for row in _audit_rows(app, "token.create"))


def test_cli_refusals_exit_non_zero_and_are_audited(app: Flask) -> None:
    runner = app.test_cli_runner()
    assert runner.invoke(args=["tokens", "create", "one"]).exit_code == 0
    again = runner.invoke(args=["tokens", "create", "one"])
    assert again.exit_code == 1
    assert "already exists" in again.output
    assert "tdk_" not in again.output
    unknown = runner.invoke(args=["tokens", "revoke", "nobody"])
    assert unknown.exit_code == 1 and "no token named 'nobody'" in unknown.output
    bad = runner.invoke(args=["tokens", "create", "bad name"])
    assert bad.exit_code == 1 and "invalid token name" in bad.output

    creates = [(row.target_id, row.outcome) for row in _audit_rows(app, "token.create")]
    assert creates == [("one", "ok"), ("one", "refused"), ("bad name", "refused")]
    assert [(row.target_id, row.outcome) for row in _audit_rows(app, "token.revoke")] == [("nobody", "refused")]
    with app.app_context():
        assert [row.name for row in list_tokens()] == ["one"]
