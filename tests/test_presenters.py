"""The console's presenters: every event kind the engine records has a label of its own."""

from __future__ import annotations

from webapp.console.presenters import EVENT_LABELS
from webapp.tasks.models import TaskEventKind


def test_every_event_kind_has_a_timeline_label() -> None:
    """A new kind without a label would show its raw name ("Time_Limit_Exceeded") on the timeline."""
    missing = [kind.value for kind in TaskEventKind if kind.value not in EVENT_LABELS]
    assert not missing, f"no timeline label for {missing} in webapp/console/presenters.py"
