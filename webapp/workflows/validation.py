"""A submitted workflow checked whole before anything is written; errors name the field.

Every task is checked as a lone submit would be (``tasks.validation.task_row``), its errors
prefixed with its place (``tasks[3].payload.count``); keys must be unique, ``after`` must name
known keys, and the dependencies must not form a cycle (the error names the keys around it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..tasks.errors import ValidationError
from ..tasks.processor import TaskProcessor
from ..tasks.validation import task_row, unstorable_text
from .models import CALLBACK_KEY_PREFIX, CALLBACK_KINDS, FailurePolicy

TASK_FIELDS = frozenset({"key", "task_type", "payload", "priority", "after", "notify_url", "created_by"})
CALLBACK_FIELDS = frozenset({"task_type", "payload", "priority"})
MAX_KEY_LENGTH = 100
MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class CheckedWorkflow:
    """A workflow ready to insert: its rows in input order, each task's parents, callbacks."""

    name: str | None
    on_failure: str
    keys: list[str]
    rows: list[dict[str, Any]]
    parents: list[list[int]]  # parents[i]: indexes of the tasks task i waits for
    callbacks: dict[str, dict[str, Any]]


def check_workflow(processor_for: Callable[[str], TaskProcessor], clock: Callable[[], datetime],
                   tasks: Any, name: Any, on_failure: Any, callbacks: Any, max_tasks: int,
                   principal: str | None, created_by: Any = None) -> CheckedWorkflow:
    """The workflow as rows to insert, or a ``ValidationError`` naming the field at fault."""
    name = _checked_name(name)
    policy = _checked_policy(on_failure)
    if not isinstance(tasks, list) or not tasks:
        raise ValidationError("tasks must be a non-empty list of task objects", field="tasks")
    if len(tasks) > max_tasks:
        raise ValidationError(f"a workflow has at most {max_tasks} tasks, got {len(tasks)}", field="tasks")
    keys = [_checked_key(index, item) for index, item in enumerate(tasks)]
    index_of: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key in index_of:
            raise ValidationError(f"duplicate key {key!r} (also tasks[{index_of[key]}].key)",
                                  field=f"tasks[{index}].key")
        index_of[key] = index
    parents = [_checked_after(index, item, index_of) for index, item in enumerate(tasks)]
    cycle = find_cycle(keys, parents)
    if cycle:
        raise ValidationError("the dependencies form a cycle: " + " -> ".join(cycle), field="tasks")
    rows = []
    for index, item in enumerate(tasks):
        try:
            rows.append(task_row(processor_for, clock, item.get("task_type"), item.get("payload", {}),
                                 item.get("priority"), item.get("created_by", created_by), None, None, None,
                                 item.get("notify_url"), None, principal))
        except ValidationError as exc:
            field = f"tasks[{index}].{exc.field}" if exc.field else f"tasks[{index}]"
            raise type(exc)(f"tasks[{index}] ({keys[index]!r}): {exc.message}", field=field) from None
    return CheckedWorkflow(name, policy, keys, rows, parents,
                           _checked_callbacks(processor_for, clock, callbacks, principal))


def find_cycle(keys: list[str], parents: list[list[int]]) -> list[str]:
    """The keys around one cycle (first key repeated at the end), or [] when there is none.

    Kahn's algorithm removes every task that does not sit on or behind a cycle; a walk along
    parents from any task left over must come back to a task it visited: that loop is named.
    """
    waiting_on = [len(p) for p in parents]
    children: list[list[int]] = [[] for _ in keys]
    for child, its_parents in enumerate(parents):
        for parent in its_parents:
            children[parent].append(child)
    ready = [i for i, n in enumerate(waiting_on) if n == 0]
    while ready:
        node = ready.pop()
        for child in children[node]:
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                ready.append(child)
    left = [i for i, n in enumerate(waiting_on) if n > 0]
    if not left:
        return []
    remaining = set(left)
    seen: dict[int, int] = {}
    path: list[int] = []
    node = left[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(p for p in parents[node] if p in remaining)
    loop = path[seen[node]:]
    loop.reverse()  # parent -> child order reads as "a -> b": b runs after a
    first = loop.index(min(loop))  # start at the task given first, so the message is stable
    loop = loop[first:] + loop[:first]
    return [keys[i] for i in loop] + [keys[loop[0]]]


def _checked_name(name: Any) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ValidationError(f"name must be a non-empty string of at most {MAX_NAME_LENGTH} characters",
                              field="name")
    problem = unstorable_text(name)
    if problem:
        raise ValidationError(f"name {problem}", field="name")
    return name


def _checked_policy(on_failure: Any) -> str:
    if on_failure is None:
        return FailurePolicy.CANCEL_DEPENDENTS.value
    try:
        return FailurePolicy(on_failure).value
    except ValueError:
        allowed = " or ".join(p.value for p in FailurePolicy)
        raise ValidationError(f"on_failure must be {allowed}, got {on_failure!r}", field="on_failure") from None


def _checked_key(index: int, item: Any) -> str:
    if not isinstance(item, dict):
        raise ValidationError(f"tasks[{index}] must be an object", field=f"tasks[{index}]")
    unknown = sorted(set(item) - TASK_FIELDS)
    if unknown:
        raise ValidationError(f"tasks[{index}] has unknown field {unknown[0]!r}", field=f"tasks[{index}].{unknown[0]}")
    key = item.get("key")
    field = f"tasks[{index}].key"
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationError(f"{field} must be a string of 1 to {MAX_KEY_LENGTH} characters", field=field)
    if key.startswith(CALLBACK_KEY_PREFIX):
        raise ValidationError(f"{field} must not start with {CALLBACK_KEY_PREFIX!r} (callbacks' keys do)",
                              field=field)
    problem = unstorable_text(key)
    if problem:
        raise ValidationError(f"{field} {problem}", field=field)
    return key


def _checked_after(index: int, item: dict[str, Any], index_of: dict[str, int]) -> list[int]:
    after = item.get("after", [])
    field = f"tasks[{index}].after"
    if after is None:
        return []
    if not isinstance(after, list):
        raise ValidationError(f"{field} must be a list of keys", field=field)
    parents: list[int] = []
    for position, key in enumerate(after):
        where = f"{field}[{position}]"
        if not isinstance(key, str) or key not in index_of:
            raise ValidationError(f"{where}: unknown key {key!r}", field=where)
        if index_of[key] in parents:
            raise ValidationError(f"{where}: key {key!r} is listed twice", field=where)
        parents.append(index_of[key])
    return parents


def _checked_callbacks(processor_for: Callable[[str], TaskProcessor], clock: Callable[[], datetime],
                       callbacks: Any, principal: str | None) -> dict[str, dict[str, Any]]:
    """Each callback as ``{"task_type", "payload", "priority"}``, checked like a task."""
    if callbacks is None:
        return {}
    if not isinstance(callbacks, dict):
        raise ValidationError("callbacks must be an object", field="callbacks")
    checked: dict[str, dict[str, Any]] = {}
    for kind, spec in callbacks.items():
        field = f"callbacks.{kind}"
        if kind not in CALLBACK_KINDS:
            raise ValidationError(f"unknown callback {kind!r}; expected {', '.join(CALLBACK_KINDS)}", field=field)
        if spec is None:
            continue
        if not isinstance(spec, dict):
            raise ValidationError(f"{field} must be an object", field=field)
        unknown = sorted(set(spec) - CALLBACK_FIELDS)
        if unknown:
            raise ValidationError(f"{field} has unknown field {unknown[0]!r}", field=f"{field}.{unknown[0]}")
        try:
            row = task_row(processor_for, clock, spec.get("task_type"), spec.get("payload", {}), spec.get("priority"),
                           None, None, None, None, None, None, principal)
        except ValidationError as exc:
            raise type(exc)(f"{field}: {exc.message}", field=f"{field}.{exc.field}" if exc.field else field) from None
        checked[kind] = {"task_type": row["task_type"], "payload": row["payload"], "priority": spec.get("priority")}
    return checked
