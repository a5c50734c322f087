"""Processor registry: task type -> processor instance, refusing duplicates."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any

from .errors import InvalidPayload, RegistryError, json_kind
from .limits import TaskLimits, checked_limits
from .processor import TaskProcessor, is_async_processor

ENTRY_POINT_GROUP = "webapp.task_processors"
# Hooks the engine calls outside the attempt, synchronously: an ``async def`` one would hand it
# a coroutine it never awaits, so registration refuses it.
SYNC_HOOKS = ("get_task_type", "get_retry_config", "get_priority", "get_limits", "get_schedules",
              "should_notify_on_success", "should_notify_on_failure", "build_notification_request")


class ProcessorRegistry:
    """Holds one processor per task type; a second processor for a type is an error."""

    def __init__(self) -> None:
        self._processors: dict[str, TaskProcessor] = {}
        self._limits: dict[str, TaskLimits] = {}
        self._async: set[str] = set()  # types whose process() is ``async def`` (async_runner.py)

    def register(self, processor: TaskProcessor) -> None:
        if not isinstance(processor, TaskProcessor):
            raise RegistryError(f"{processor!r} is not a TaskProcessor")
        _check_async_shape(processor)
        task_type = processor.get_task_type()
        if not isinstance(task_type, str) or not task_type.strip() or len(task_type) > 100:
            raise RegistryError(
                f"{type(processor).__name__}.get_task_type() must return a non-empty name "
                f"of at most 100 characters, got {task_type!r}"
            )
        existing = self._processors.get(task_type)
        if existing is not None:
            raise RegistryError(
                f"two processors for task type {task_type!r}: "
                f"{_qualname(type(existing))} and {_qualname(type(processor))}"
            )
        processor.get_retry_config()  # a broken retry config fails here, at start-up
        try:  # so do limits: a zero limit, a key that is no payload field, soft above hard
            limits = checked_limits(task_type, processor.get_limits(), processor.payload_type)
        except ValueError as exc:
            raise RegistryError(f"{task_type}: get_limits(): {exc}") from exc
        if is_async_processor(processor):
            if limits.isolation == "process":
                raise RegistryError(f"{task_type}: get_limits(): isolation='process' needs a plain 'def' "
                                    f"process(); an async processor runs on the worker's event loop")
            self._async.add(task_type)
        self._processors[task_type] = processor
        self._limits[task_type] = limits

    def get(self, task_type: str) -> TaskProcessor | None:
        return self._processors.get(task_type)

    def limits_of(self, task_type: str) -> TaskLimits:
        """The limits the processor of ``task_type`` declared (checked at registration)."""
        return self._limits.get(task_type) or TaskLimits()

    def task_types(self) -> list[str]:
        return sorted(self._processors)

    def is_async(self, task_type: str) -> bool:
        """Whether the processor of ``task_type`` is ``async def`` (it runs on the event loop)."""
        return task_type in self._async

    def __contains__(self, task_type: object) -> bool:
        return task_type in self._processors

    def __iter__(self) -> Iterator[TaskProcessor]:
        return iter(self._processors[name] for name in self.task_types())

    def __len__(self) -> int:
        return len(self._processors)

    def load_modules(self, module_names: Iterable[str]) -> None:
        """Register every concrete ``TaskProcessor`` subclass defined in each named module."""
        for name in module_names:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise RegistryError(f"ASYNC_TASK_PROCESSORS: cannot import {name!r}: {exc}") from exc
            for processor_class in processors_defined_in(module):
                self.register(processor_class())

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Register processors that installed packages expose in the entry-point group."""
        for entry in entry_points(group=group):
            try:
                target = entry.load()
            except Exception as exc:  # a broken plugin must name itself
                raise RegistryError(f"entry point {entry.name!r} failed to load: {exc}") from exc
            if isinstance(target, types.ModuleType):
                for processor_class in processors_defined_in(target):
                    self.register(processor_class())
            elif inspect.isclass(target) and issubclass(target, TaskProcessor):
                self.register(target())
            else:
                raise RegistryError(
                    f"entry point {entry.name!r} must name a module or a TaskProcessor subclass"
                )


def _check_async_shape(processor: TaskProcessor) -> None:
    """``process`` may be ``async def`` (a coroutine); an async generator or an async hook is refused."""
    name = type(processor).__name__
    if inspect.isasyncgenfunction(processor.process):
        raise RegistryError(f"{name}.process is an async generator (it yields); write "
                            f"'async def process(self, task, payload)' that returns a TaskResult")
    for hook in SYNC_HOOKS:
        if inspect.iscoroutinefunction(getattr(processor, hook, None)):
            raise RegistryError(f"{name}.{hook} must be a plain 'def': only process() may be 'async def'")


def processors_defined_in(module: types.ModuleType) -> list[type[TaskProcessor]]:
    """Concrete processor classes whose home is ``module`` (imported names are skipped)."""
    found = []
    for _, value in vars(module).items():
        if (
            inspect.isclass(value)
            and issubclass(value, TaskProcessor)
            and value is not TaskProcessor
            and value.__module__ == module.__name__
            and not inspect.isabstract(value)
            and not getattr(value, "__abstract__", False)
        ):
            found.append(value)
    return found


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- payload checking ------------------------------------------------------------------------

_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
    dict: (dict,),
    list: (list,),
    Any: (object,),
}


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a JSON value fits a dataclass field annotation (simple types, containers, Optional)."""
    if annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict:
        args = typing.get_args(annotation)
        return isinstance(value, dict) and (not args or all(_matches(v, args[1]) for v in value.values()))
    if annotation in (int,) and isinstance(value, bool):
        return False
    if annotation is float and isinstance(value, bool):
        return False
    accepted = _SIMPLE_TYPES.get(annotation)
    if accepted is not None:
        return isinstance(value, accepted)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if not isinstance(value, dict):
            return False
        try:
            payload_from_json(annotation, value)
        except InvalidPayload:
            return False
        return True
    return True  # types we cannot check from JSON are left to the processor


def payload_from_json(payload_type: type, data: dict[str, Any]) -> Any:
    """Build ``payload_type`` from a JSON object, naming the first field that does not fit."""
    if not dataclasses.is_dataclass(payload_type):
        validate = getattr(payload_type, "model_validate", None)  # pydantic-style types
        if validate is None:
            raise InvalidPayload(f"payload_type {payload_type!r} is not a dataclass")
        try:
            return validate(data)
        except Exception as exc:
            raise InvalidPayload(f"payload does not fit {payload_type.__name__}: {exc}", field="payload") from None
    hints = typing.get_type_hints(payload_type)
    fields = {f.name: f for f in dataclasses.fields(payload_type) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidPayload(
            f"payload has unknown field {unknown[0]!r} for {payload_type.__name__}",
            field=f"payload.{unknown[0]}",
        )
    for name, spec in fields.items():
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if name not in data:
            if required:
                raise InvalidPayload(
                    f"payload is missing required field {name!r}", field=f"payload.{name}"
                )
            continue
        annotation = hints.get(name, Any)
        if not _matches(data[name], annotation):
            raise InvalidPayload(
                f"payload field {name!r} must be {_describe(annotation)}, got {json_kind(data[name])}",
                field=f"payload.{name}",
            )
    try:
        return payload_type(**data)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload does not fit {payload_type.__name__}: {exc}", field="payload") from None


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                "dict": "an object", "list": "an array"}.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")
