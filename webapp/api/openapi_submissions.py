"""Submission schemas of the OpenAPI document (``openapi.build_openapi`` merges them): each task
type's payload from its dataclass, one named component per task type with a typed ``task_type``,
and ``TaskSubmission``, their ``oneOf`` with a discriminator, which batch items reuse, so that
generators (openapi-python-client, openapi-generator) build a client that can submit."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from ..tasks.registry import ProcessorRegistry
from ..tasks.validation import INT32_MAX, INT32_MIN, MAX_EXPIRES_IN


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- payload schemas from dataclasses ----------------------------------------------------------

_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def annotation_schema(annotation: Any, seen: frozenset[type] = frozenset()) -> dict[str, Any]:
    """JSON Schema for a dataclass field annotation, matching what the registry accepts."""
    if annotation is Any or annotation is object:
        return {}
    if annotation is type(None):
        return {"type": "null"}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [annotation_schema(arg, seen) for arg in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset):
        return {"type": "array", **({"items": annotation_schema(args[0], seen)} if args else {})}
    if origin is dict:
        return {"type": "object",
                **({"additionalProperties": annotation_schema(args[1], seen)} if len(args) == 2 else {})}
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return dataclass_schema(annotation, seen)
    return {}  # types the registry cannot check from JSON are left to the processor


def dataclass_schema(payload_type: type, seen: frozenset[type] = frozenset()) -> dict[str, Any]:
    """An object schema for a payload dataclass: its init fields, the ones without defaults required."""
    if payload_type in seen:  # a recursive type: describe the inner level loosely
        return {"type": "object"}
    seen = seen | {payload_type}
    hints = typing.get_type_hints(payload_type)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for spec in dataclasses.fields(payload_type):
        if not spec.init:
            continue
        properties[spec.name] = annotation_schema(hints.get(spec.name, Any), seen)
        if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            required.append(spec.name)
    schema: dict[str, Any] = {"type": "object", "title": payload_type.__name__, "properties": properties,
                              "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def payload_schema(payload_type: type | None) -> dict[str, Any]:
    """The payload of one task type: its dataclass (or pydantic model), else any JSON object."""
    if payload_type is None:
        return {"type": "object", "description": "Any JSON object; the processor declares no payload type."}
    if dataclasses.is_dataclass(payload_type):
        return dataclass_schema(payload_type)
    model_schema = getattr(payload_type, "model_json_schema", None)
    if callable(model_schema):
        try:
            return dict(model_schema())
        except Exception:  # a model that cannot describe itself still accepts JSON objects
            pass
    return {"type": "object"}



def _common_submission_properties() -> dict[str, Any]:
    return {
        "priority": {"type": ["integer", "null"], "minimum": INT32_MIN, "maximum": INT32_MAX,
                     "description": "Larger runs first; default from the processor, else 0."},
        "created_by": {"type": ["string", "null"], "maxLength": 255,
                       "description": "Creator; an email address gets a notification. "
                                      "Default: the token's name."},
        "run_at": {"type": ["string", "null"], "format": "date-time",
                   "description": "Run no earlier than this time (ISO-8601 with a zone)."},
        "notify_url": {"type": ["string", "null"], "format": "uri", "maxLength": 2000,
                       "description": "http(s) URL that receives a signed POST when the task finishes."},
        "start_by": {"type": ["string", "null"], "format": "date-time",
                     "description": "Not started by this time (ISO-8601 with a zone): never started, "
                                    "CANCELLED 'start deadline passed'."},
        "expires_in": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": MAX_EXPIRES_IN,
                       "description": "Seconds from now: the same as start_by (give one of the two)."},
    }


GENERIC_SUBMISSION = "GenericTaskSubmission"


def submission_component_name(task_type: str, taken: set[str]) -> str:
    """``CREATE_SERVER`` → ``CreateServerSubmission``: a component name generators turn into a
    class; a number is appended when two task types would give the same name."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", task_type) if w]
    base = "".join(w[:1].upper() + w[1:].lower() for w in words) or "Task"
    if base[0].isdigit():
        base = "Type" + base
    name, n = f"{base}Submission", 2
    while name in taken:
        name, n = f"{base}{n}Submission", n + 1
    return name


def submission_schemas(registry: ProcessorRegistry | None, taken: set[str]) -> dict[str, Any]:
    """Component schemas for submissions: one named object per registered task type (its
    ``task_type`` a typed constant, its payload the type's schema) and ``TaskSubmission``, a
    ``oneOf`` of them with a ``discriminator`` on ``task_type`` and its mapping, which batch items
    reuse. With no registry (the document anonymous callers get) one generic shape stands in.
    ``taken``: the document's other component names, which no task type's name may shadow."""
    common = _common_submission_properties()
    common["idempotency_key"] = {
        "type": ["string", "null"], "minLength": 1, "maxLength": 200,
        "description": "Same key from the same token: the existing task is returned (200)."}
    processors = list(registry) if registry is not None else []
    if not processors:
        generic = {"type": "object", "required": ["task_type", "payload"], "additionalProperties": False,
                   "properties": {"task_type": {"type": "string", "minLength": 1, "maxLength": 100},
                                  "payload": {"type": "object"}, **common}}
        return {GENERIC_SUBMISSION: generic, "TaskSubmission": _ref(GENERIC_SUBMISSION)}
    schemas: dict[str, Any] = {}
    mapping: dict[str, str] = {}
    for processor in processors:
        task_type = processor.get_task_type()
        name = submission_component_name(task_type, set(schemas) | taken)
        schemas[name] = {
            "type": "object",
            "title": name,
            "description": f"Submit a {task_type} task.",
            "required": ["task_type", "payload"],
            "additionalProperties": False,
            "properties": {"task_type": {"type": "string", "enum": [task_type], "default": task_type},
                           "payload": payload_schema(processor.payload_type), **common},
        }
        mapping[task_type] = f"#/components/schemas/{name}"
    schemas["TaskSubmission"] = {
        "oneOf": [_ref(name) for name in schemas],
        "discriminator": {"propertyName": "task_type", "mapping": mapping},
    }
    return schemas
