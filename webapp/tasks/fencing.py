"""The one shape of every write a lease holder makes: fenced by the attempt's claim token.

A worker paused past its lease (SIGSTOP, a long GC, a partition) must not overwrite what
happened since: recovery gave the task to someone else, or an operator cancelled it. So every
write made on behalf of an attempt (its finish, a cancel acknowledgement, a release or
give-back, a progress report, recovery's own takeover) is ``UPDATE … WHERE id = :id AND
claim_token = :token AND status = 'PROCESSING'``, and zero rows means the lease is gone.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Update, update

from .attempt import TaskInfo
from .models import AsyncTask
from .transitions import starting_statuses

# The only status in which an attempt holds a lease: where a worker's outcome starts from.
(LEASED,) = starting_statuses("succeed")


def fenced_update(task_id: int, claim_token: str | None, *conditions: Any) -> Update:
    """``UPDATE async_task`` of this attempt only while its lease holds; add ``.values(...)``."""
    return (update(AsyncTask)
            .where(AsyncTask.id == task_id, AsyncTask.claim_token == claim_token,
                   AsyncTask.status == LEASED, *conditions)
            .execution_options(synchronize_session=False))


def attempt_key(task: TaskInfo) -> tuple[int, str]:
    """One attempt of a task: its id and the claim token of that attempt."""
    return task.id, task.claim_token


def stored_result(data: Any) -> Any:
    """A processor's result data as stored JSON; anything not JSON-serialisable is named, not lost."""
    if data is None:
        return None
    try:
        return json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError):
        return {"unserialisable_result": repr(data)[:2000]}
