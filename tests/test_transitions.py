"""The transition table: the one source of the state machine, and what is derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from webapp.tasks import dialect_postgres
from webapp.tasks.bulk import BulkAction
from webapp.tasks.fencing import LEASED
from webapp.tasks.models import TaskEventKind, TaskStatus
from webapp.tasks.transitions import (
    TRANSITIONS,
    Actor,
    accepted_statuses,
    markdown_table,
    may,
    refusal_message,
    starting_statuses,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_architecture_doc_shows_the_table_from_the_code():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert markdown_table() in doc, "regenerate the table in docs/architecture.md from markdown_table()"


def test_every_status_is_reachable_and_every_transition_names_real_statuses():
    statuses = {status.value for status in TaskStatus}
    reached = {t.to_status for t in TRANSITIONS.values() if t.to_status is not None}
    assert reached == statuses
    for t in TRANSITIONS.values():
        assert set(t.from_statuses) <= statuses, t.name
        assert isinstance(t.event, TaskEventKind) and isinstance(t.actor, Actor)


def test_finished_tasks_leave_only_by_an_operator():
    for t in TRANSITIONS.values():
        if {TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value, TaskStatus.CANCELLED.value} & set(t.from_statuses):
            assert t.actor is Actor.OPERATOR, t.name


@pytest.mark.parametrize(("name", "status", "allowed"), [
    ("cancel", "PENDING", True), ("cancel", "RETRYING", True), ("cancel", "PROCESSING", False),
    ("cancel", "SUCCESS", False), ("request_cancel", "PROCESSING", True), ("request_cancel", "PENDING", False),
    ("retry", "FAILURE", True), ("retry", "CANCELLED", False), ("retry", "PENDING", False),
    ("resubmit", "FAILURE", True), ("resubmit", "CANCELLED", True), ("resubmit", "SUCCESS", False),
    ("claim", "PENDING", True), ("claim", "PROCESSING", False), ("succeed", "PROCESSING", True),
])
def test_may_answers_from_the_table(name, status, allowed):
    assert may(name, status) is allowed


def test_an_unknown_transition_is_named():
    with pytest.raises(KeyError, match="unknown transition 'explode'"):
        may("explode", "PENDING")


def test_cancel_accepts_running_tasks_by_requesting_a_cancel():
    assert accepted_statuses("cancel") == ("PENDING", "RETRYING", "PROCESSING")
    assert accepted_statuses("retry") == ("FAILURE",)


def test_refusals_name_the_task_its_status_and_the_rule():
    assert refusal_message("cancel", "SUCCESS", 7) == (
        "cannot cancel task 7: it is SUCCESS; only PENDING, RETRYING or PROCESSING tasks can be cancelled")
    assert refusal_message("retry", "PENDING", 7) == (
        "cannot retry task 7: it is PENDING; only FAILURE tasks can be retried")
    assert refusal_message("resubmit", "SUCCESS") == (
        "cannot edit and retry this task: it is SUCCESS; only FAILURE or CANCELLED tasks can be resubmitted")


def test_bulk_actions_change_the_statuses_their_transition_starts_from():
    assert BulkAction.CANCEL.allowed_from == starting_statuses("cancel")
    assert BulkAction.RETRY.allowed_from == starting_statuses("retry")


def test_events_carry_the_transition_statuses():
    assert TRANSITIONS["retry"].event_fields() == {"kind": "RETRIED", "from_status": "FAILURE", "to_status": "PENDING"}
    # Two possible starting statuses: which one is not recorded.
    assert TRANSITIONS["cancel"].event_fields() == {"kind": "CANCELLED", "to_status": "CANCELLED"}
    # No status change: no statuses on the event.
    assert TRANSITIONS["request_cancel"].event_fields() == {"kind": "CANCEL_REQUESTED"}


def test_the_hand_written_statements_take_the_statuses_the_table_gives():
    claimable = ", ".join(f"'{status}'" for status in starting_statuses("claim"))
    assert f"status IN ({claimable})" in dialect_postgres.CLAIM_SQL
    assert f"t.status = '{LEASED}'" in dialect_postgres.SUCCEED_SQL
    assert starting_statuses("succeed") == starting_statuses("release") == (LEASED,)
