"""The audit log's one writer: who did what to which target, with what outcome.

Callable from anything with a session (accounts, tokens, console login, the task service)
without building a task service. The row joins the caller's transaction: it commits or rolls
back with the change it records.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from ..extensions import db
from .models import AuditEntry


def record_audit(actor: str | None, action: str, target_type: str | None, target_id: Any,
                 outcome: str = "ok", detail: dict[str, Any] | None = None,
                 session: Session | None = None) -> None:
    """Add an ``audit_log`` row to ``session`` (default: the app's) without committing it.

    ``action`` is dotted (``task.cancel``, ``user.create``); ``outcome`` is ``ok``, ``refused``,
    ``failed`` or ``noop``; ``target_id`` is stored as text (task ids, user names, token names).
    """
    (session or db.session()).add(AuditEntry(
        actor=actor, action=action, target_type=target_type,
        target_id=None if target_id is None else str(target_id), outcome=outcome, detail=detail,
    ))
