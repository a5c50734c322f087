"""The ``ASYNC_TASK_SCHEDULES`` setting: schedules declared in configuration, read but not yet checked.

Either the path of a YAML file (a list of schedules, or a mapping with a ``schedules:`` list)
or, from the config file's ``async-task: schedules:`` section, the list itself. This module
imports nothing of the application, so ``config.py`` can use its parser at start-up; each
entry is checked against the processors later, by ``declarations.collect_declarations``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_SETTING = "ASYNC_TASK_SCHEDULES"
# YAML spellings people write (the config file uses dashes) -> field names.
KEY_ALIASES = {"task-type": "task_type", "every": "interval_seconds", "interval": "interval_seconds",
               "interval-seconds": "interval_seconds", "catch-up": "catch_up", "created-by": "created_by",
               "start-at": "start_at", "end-at": "end_at", "time-zone": "timezone"}


@dataclass
class DeclaredSchedules:
    """The raw declarations of ``ASYNC_TASK_SCHEDULES`` and where they came from."""

    entries: list[dict[str, Any]]
    origin: str


def parse_schedules_setting(value: Any) -> DeclaredSchedules:
    """The setting's parser: a YAML file path or a list of mappings (config file section)."""
    if isinstance(value, DeclaredSchedules):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return DeclaredSchedules([], "")
    if isinstance(value, str):
        import yaml  # only a schedules file needs it, not every start

        path = Path(value.strip())
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {exc}") from None
        if isinstance(document, Mapping):
            section = document.get("async-task")
            document = (section if isinstance(section, Mapping) else document).get("schedules")
        return DeclaredSchedules(_entries(document or []), f"file {path}")
    return DeclaredSchedules(_entries(value), "the configuration (async-task: schedules:)")


def _entries(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise ValueError("expected a list of schedules")
    entries = []
    for index, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ValueError(f"schedule {index} is not a mapping")
        entries.append({KEY_ALIASES.get(str(key), str(key)): item_value for key, item_value in item.items()})
    return entries
