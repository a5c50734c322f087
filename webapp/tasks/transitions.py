"""The state machine of a task, as one table: every transition, where it may start, where it ends.

Everything that asks "may this task be cancelled?" asks this table: the service's conditional
UPDATEs take their starting statuses from it, bulk actions preview and apply with it, the
console decides which buttons to show with ``may``, and a refused operator action is explained
by ``refusal_message`` (the API's 409 and the console's flash say the same words). The table in
``docs/architecture.md`` is checked against it by ``tests/test_transitions.py``.

A transition whose ``to_status`` is ``None`` leaves the task's status as it is: a cancel request
marks a running task, an edit-and-retry creates a new linked task.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .models import TaskEventKind, TaskStatus

PENDING, PROCESSING = TaskStatus.PENDING.value, TaskStatus.PROCESSING.value
RETRYING, SUCCESS = TaskStatus.RETRYING.value, TaskStatus.SUCCESS.value
FAILURE, CANCELLED = TaskStatus.FAILURE.value, TaskStatus.CANCELLED.value
WAITING = TaskStatus.WAITING.value


class Actor(enum.StrEnum):
    """Who performs a transition."""

    SUBMITTER = "submitter"  # an application through the API, the CLI or Python
    OPERATOR = "operator"  # a person in the console, or an API/CLI call acting as one
    CONSUMER = "consumer"  # the worker holding the attempt's lease (fenced by its claim token)
    RECOVERY = "recovery"  # the recovery sweep, for attempts whose worker is gone
    WORKFLOW = "workflow"  # a workflow's resolution, in the transaction that ended a parent
    DEADLINE = "deadline"  # the start-deadline sweep, for waiting tasks past their start_by


@dataclass(frozen=True)
class Transition:
    """One edge of the state machine.

    ``verb`` and ``done`` word a refusal ("cannot {verb} task 7: … only FAILURE tasks can be
    {done}"). ``instead_of`` names the operator action this transition answers when that
    action's own transition does not apply: cancelling a running task requests a cancel.
    """

    name: str
    from_statuses: tuple[str, ...]
    to_status: str | None
    event: TaskEventKind
    actor: Actor
    verb: str
    done: str
    instead_of: str | None = None

    def event_fields(self) -> dict[str, Any]:
        """The ``kind``/``from_status``/``to_status`` of this transition's timeline event.

        ``from_status`` is written only when the transition has a single starting status (a
        cancel of a waiting task may start from PENDING or RETRYING: which one is not recorded).
        """
        fields: dict[str, Any] = {"kind": self.event.value}
        if self.to_status is not None:
            fields["to_status"] = self.to_status
            if len(self.from_statuses) == 1:
                fields["from_status"] = self.from_statuses[0]
        return fields


TRANSITIONS: dict[str, Transition] = {t.name: t for t in (
    Transition("submit", (), PENDING, TaskEventKind.SUBMITTED, Actor.SUBMITTER, "submit", "submitted"),
    Transition("claim", (PENDING, RETRYING), PROCESSING, TaskEventKind.CLAIMED, Actor.CONSUMER,
               "claim", "claimed"),
    Transition("succeed", (PROCESSING,), SUCCESS, TaskEventKind.SUCCEEDED, Actor.CONSUMER,
               "finish", "finished"),
    Transition("schedule_retry", (PROCESSING,), RETRYING, TaskEventKind.RETRY_SCHEDULED, Actor.CONSUMER,
               "schedule a retry of", "retried automatically"),
    Transition("fail", (PROCESSING,), FAILURE, TaskEventKind.FAILED, Actor.CONSUMER, "fail", "failed"),
    Transition("honour_cancel", (PROCESSING,), CANCELLED, TaskEventKind.CANCELLED, Actor.CONSUMER,
               "end as cancelled", "ended as cancelled"),
    Transition("release", (PROCESSING,), PENDING, TaskEventKind.RELEASED, Actor.CONSUMER,
               "release", "released"),
    Transition("recover", (PROCESSING,), PENDING, TaskEventKind.RECOVERED, Actor.RECOVERY,
               "recover", "recovered"),
    Transition("give_up", (PROCESSING,), FAILURE, TaskEventKind.FAILED, Actor.RECOVERY,
               "give up on", "given up"),
    Transition("cancel", (PENDING, RETRYING), CANCELLED, TaskEventKind.CANCELLED, Actor.OPERATOR,
               "cancel", "cancelled"),
    Transition("request_cancel", (PROCESSING,), None, TaskEventKind.CANCEL_REQUESTED, Actor.OPERATOR,
               "request a cancel of", "asked to stop", instead_of="cancel"),
    Transition("retry", (FAILURE,), PENDING, TaskEventKind.RETRIED, Actor.OPERATOR, "retry", "retried"),
    Transition("resubmit", (FAILURE, CANCELLED), None, TaskEventKind.RESUBMITTED, Actor.OPERATOR,
               "edit and retry", "resubmitted"),
    # Workflows (docs/workflows.md): a task with parents is submitted WAITING and no claim takes it.
    Transition("submit_waiting", (), WAITING, TaskEventKind.SUBMITTED, Actor.SUBMITTER, "submit", "submitted"),
    Transition("unblock", (WAITING,), PENDING, TaskEventKind.UNBLOCKED, Actor.WORKFLOW,
               "unblock", "unblocked"),
    Transition("cancel_dependent", (WAITING,), CANCELLED, TaskEventKind.CANCELLED, Actor.WORKFLOW,
               "cancel", "cancelled"),
    Transition("revive", (CANCELLED,), WAITING, TaskEventKind.RETRIED, Actor.OPERATOR,
               "retry", "retried with its workflow"),
    # Flow control (docs/flow-control.md): a task not started by its start_by is never started.
    Transition("expire", (PENDING, RETRYING), CANCELLED, TaskEventKind.CANCELLED, Actor.DEADLINE,
               "expire", "expired"),
)}


def transition(name: str) -> Transition:
    """The transition called ``name``; a KeyError names the known ones."""
    try:
        return TRANSITIONS[name]
    except KeyError:
        raise KeyError(f"unknown transition {name!r}; known: {', '.join(TRANSITIONS)}") from None


def starting_statuses(name: str) -> tuple[str, ...]:
    """The statuses ``name`` may start from (what its conditional UPDATE names)."""
    return transition(name).from_statuses


def may(name: str, status: str) -> bool:
    """Whether a task in ``status`` may take the transition ``name`` now."""
    return status in transition(name).from_statuses


def accepted_statuses(action: str) -> tuple[str, ...]:
    """Statuses in which the operator action ``action`` does something.

    The action's own transition, plus those that answer it instead (cancel accepts PROCESSING
    because a running task is asked to stop), the action's own statuses first.
    """
    answering = [transition(action)] + [t for t in TRANSITIONS.values() if t.instead_of == action]
    return tuple(dict.fromkeys(status for t in answering for status in t.from_statuses))


def refusal_message(name: str, status: str, task_id: int | None = None) -> str:
    """Why the action ``name`` is refused for a task in ``status`` (the API's 409, the console's flash)."""
    action = transition(name)
    accepted = accepted_statuses(name)
    listed = " or ".join(accepted) if len(accepted) <= 2 else ", ".join(accepted[:-1]) + " or " + accepted[-1]
    subject = f"task {task_id}" if task_id is not None else "this task"
    return f"cannot {action.verb} {subject}: it is {status}; only {listed} tasks can be {action.done}"


def markdown_table() -> str:
    """The table as Markdown, as ``docs/architecture.md`` shows it (a test keeps the two equal)."""
    lines = ["| transition | from | to | event | who |", "| --- | --- | --- | --- | --- |"]
    for t in TRANSITIONS.values():
        starts = ", ".join(t.from_statuses) or "(new)"
        target = t.to_status or "(unchanged)"
        lines.append(f"| `{t.name}` | {starts} | {target} | {t.event.value} | {t.actor.value} |")
    return "\n".join(lines) + "\n"
