"""Schedules declared in code (a processor's ``get_schedules()``) and in configuration
(``ASYNC_TASK_SCHEDULES``, parsed by ``setting.py``), validated like any other definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..tasks.errors import ValidationError
from ..tasks.registry import ProcessorRegistry
from .definition import ScheduleDefinition, validate_definition
from .models import ScheduleSource
from .setting import CONFIG_SETTING, DeclaredSchedules


@dataclass
class Declaration:
    """One static schedule: its validated definition, its source and where it is declared."""

    definition: ScheduleDefinition
    source: str
    declared_in: str


def collect_declarations(registry: ProcessorRegistry, configured: DeclaredSchedules) -> list[Declaration]:
    """Every processor's default schedules plus the configured ones, validated; names unique.

    Raises ValueError naming the declaration and the field, so a bad entry stops start-up.
    """
    found: list[Declaration] = []
    for processor in registry:
        where = f"processor {type(processor).__module__}.{type(processor).__qualname__}"
        for entry in processor.get_schedules():
            raw = {"task_type": processor.get_task_type(), **dict(entry)}
            found.append(Declaration(_validated(raw, registry, where), ScheduleSource.PROCESSOR.value, where))
    for index, entry in enumerate(configured.entries):
        where = f"{CONFIG_SETTING} ({configured.origin})"
        found.append(Declaration(_validated(entry, registry, f"{where}, entry {index}"),
                                 ScheduleSource.CONFIG.value, where))
    seen: dict[str, str] = {}
    for declaration in found:
        name = declaration.definition.name
        if name in seen:
            raise ValueError(f"schedule {name!r} is declared twice: in {seen[name]} and in {declaration.declared_in}")
        seen[name] = declaration.declared_in
    return found


def _validated(raw: dict[str, Any], registry: ProcessorRegistry, where: str) -> ScheduleDefinition:
    try:
        return validate_definition(raw, registry)
    except ValidationError as exc:
        raise ValueError(f"schedule {raw.get('name')!r} in {where}: {exc.field}: {exc.message}") from None
