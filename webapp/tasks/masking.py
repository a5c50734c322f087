"""Secrets in payloads: which fields a processor declares sensitive, and their values masked.

A processor names its sensitive payload fields with a ``sensitive_fields`` attribute (dotted
paths reach into nested objects: ``"credentials.password"``) or with dataclass field metadata
(``field(metadata={"sensitive": True})``). Their values stay in the database for the processor;
everything that leaves it (API answers, the console, exports, webhook bodies, log lines, error
texts shown to operators) shows ``MASK`` instead. An edited payload that still carries ``MASK``
for a sensitive field keeps the stored value (``restore_masked``), so edit-and-retry works
without the operator ever seeing the secret.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Iterable
from typing import Any

from flask import current_app, has_app_context

from .processor import TaskProcessor

MASK = "•••"
SENSITIVE_METADATA_KEY = "sensitive"
# Shorter values are not scrubbed from free text: masking every "1" or "no" in an error message
# would hide more than it protects.
MIN_SCRUBBED_LENGTH = 4


# Declarations are class attributes: read once per processor class.
_declared_cache: dict[type, frozenset[str]] = {}


def _declared_by_class(processor_class: type[TaskProcessor]) -> frozenset[str]:
    cached = _declared_cache.get(processor_class)
    if cached is not None:
        return cached
    declared = set(getattr(processor_class, "sensitive_fields", ()) or ())
    payload_type = getattr(processor_class, "payload_type", None)
    if payload_type is not None and dataclasses.is_dataclass(payload_type):
        declared.update(spec.name for spec in dataclasses.fields(payload_type)
                        if spec.metadata.get(SENSITIVE_METADATA_KEY))
    _declared_cache[processor_class] = frozenset(declared)
    return _declared_cache[processor_class]


def declared_sensitive_fields(processor: TaskProcessor | None) -> frozenset[str]:
    """The payload paths ``processor`` declares sensitive (attribute and dataclass metadata)."""
    if processor is None:
        return frozenset()
    return _declared_by_class(type(processor))


def sensitive_fields_for(task_type: str | None) -> frozenset[str]:
    """The sensitive payload paths of ``task_type`` in the current app (none outside an app)."""
    if task_type is None or not has_app_context():
        return frozenset()
    engine = current_app.extensions.get("async_task")
    if engine is None:
        return frozenset()
    return declared_sensitive_fields(engine.registry.get(task_type))


def _split(path: str) -> list[str]:
    return path.split(".")


def mask_payload(payload: Any, fields: Iterable[str]) -> Any:
    """A copy of ``payload`` with every present sensitive path's value replaced by ``MASK``."""
    paths = [_split(path) for path in fields]
    if not paths or not isinstance(payload, dict):
        return payload
    masked = copy.deepcopy(payload)
    for parts in paths:
        node: Any = masked
        for name in parts[:-1]:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = MASK
    return masked


def masked_payload_of(task_type: str | None, payload: Any) -> Any:
    """``payload`` as anyone outside the database may see it."""
    return mask_payload(payload, sensitive_fields_for(task_type))


def restore_masked(stored: Any, edited: Any, fields: Iterable[str]) -> Any:
    """``edited`` with each sensitive value still equal to ``MASK`` put back from ``stored``.

    A sensitive field the operator replaced keeps the new value; one they removed stays removed.
    """
    if not isinstance(stored, dict) or not isinstance(edited, dict):
        return edited
    restored = copy.deepcopy(edited)
    for parts in (_split(path) for path in fields):
        source: Any = stored
        target: Any = restored
        for name in parts[:-1]:
            source = source.get(name) if isinstance(source, dict) else None
            target = target.get(name) if isinstance(target, dict) else None
        last = parts[-1]
        if (isinstance(target, dict) and target.get(last) == MASK
                and isinstance(source, dict) and last in source):
            target[last] = source[last]
    return restored


def secret_values(payload: Any, fields: Iterable[str]) -> list[str]:
    """The texts of the sensitive values in ``payload`` (long enough to scrub), longest first."""
    found: set[str] = set()
    for parts in (_split(path) for path in fields):
        node: Any = payload
        for name in parts:
            node = node.get(name) if isinstance(node, dict) else None
        _collect_texts(node, found)
    return sorted((text for text in found if len(text) >= MIN_SCRUBBED_LENGTH), key=len, reverse=True)


def _collect_texts(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _collect_texts(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_texts(item, found)
    elif value is not None and not isinstance(value, bool):
        found.add(str(value))
        if not isinstance(value, str):
            return
        # The same secret as it appears inside JSON text (quotes and backslashes escaped).
        found.add(json.dumps(value, ensure_ascii=False)[1:-1])


def scrub_secrets(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of a secret value replaced by ``MASK``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_text(text: str | None, secrets: Iterable[str]) -> str | None:
    """Like ``scrub_secrets``, passing None (a field without text) through."""
    return scrub_secrets(text, secrets) if text else text


def scrub_task_text(task_type: str | None, payload: Any, text: str | None) -> str | None:
    """An error, traceback or message of a task with its sensitive payload values scrubbed."""
    fields = sensitive_fields_for(task_type)
    if not fields or not text:
        return text
    return scrub_text(text, secret_values(payload, fields))


# -- JSON text cut short (list previews) ---------------------------------------------------------

def mask_json_text(text: str | None, fields: Iterable[str]) -> str | None:
    """The start of a payload's JSON text with each sensitive key's value replaced by ``"•••"``.

    A list row only has the first characters of the JSON (cut by the database), which may not
    parse: keys are found in the text, and a value cut off at the end is masked to the end. A
    nested path is matched by its last name at any depth (masking too much is the safe side).
    """
    names = sorted({_split(path)[-1] for path in fields})
    if not text or not names:
        return text
    pattern = re.compile(r'(?<!\\)"(' + "|".join(re.escape(name) for name in names) + r')"\s*:\s*')
    pieces: list[str] = []
    position = 0
    for match in pattern.finditer(text):
        if match.start() < position:
            continue  # inside a value already masked
        pieces.append(text[position:match.end()])
        pieces.append(json.dumps(MASK, ensure_ascii=False))
        position = _end_of_value(text, match.end())
    pieces.append(text[position:])
    return "".join(pieces)


def _end_of_value(text: str, start: int) -> int:
    """Where the JSON value starting at ``start`` ends (the text's end when it is cut off)."""
    if start >= len(text):
        return start
    opening = text[start]
    if opening == '"':
        index = start + 1
        while index < len(text):
            if text[index] == "\\":
                index += 2
                continue
            if text[index] == '"':
                return index + 1
            index += 1
        return len(text)
    if opening in "{[":
        depth, index, in_string = 0, start, False
        while index < len(text):
            char = text[index]
            if in_string:
                if char == "\\":
                    index += 1
                elif char == '"':
                    in_string = False
            elif char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return index + 1
            index += 1
        return len(text)
    match = re.compile(r"[^,}\]\s]*").match(text, start)
    return match.end() if match else start
