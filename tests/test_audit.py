"""record_audit: an audit row written without a task service, committed or rolled back with its change."""

from __future__ import annotations

from sqlalchemy import select

from webapp.extensions import db
from webapp.tasks.audit import record_audit
from webapp.tasks.models import AuditEntry


def entries() -> list[tuple]:
    return [(e.actor, e.action, e.target_type, e.target_id, e.outcome, e.detail)
            for e in db.session.scalars(select(AuditEntry).order_by(AuditEntry.id))]


def test_an_audit_row_commits_with_the_callers_transaction(app_ctx):
    record_audit("ann", "user.create", "user", "bob", detail={"role": "viewer"})
    record_audit("ann", "api_token.create", "api_token", 42, outcome="refused")
    db.session.commit()
    assert entries() == [("ann", "user.create", "user", "bob", "ok", {"role": "viewer"}),
                         ("ann", "api_token.create", "api_token", "42", "refused", None)]


def test_an_audit_row_rolls_back_with_the_callers_transaction(app_ctx):
    record_audit("ann", "user.disable", "user", "bob")
    db.session.rollback()
    assert entries() == []


def test_an_explicit_session_is_used(app_ctx):
    session = db.session()
    record_audit(None, "task.purge", "task", None, session=session)
    assert len(session.new) == 1
    session.commit()
    assert entries() == [(None, "task.purge", "task", None, "ok", None)]
