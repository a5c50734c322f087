"""Processor discovery and payload checking."""

from dataclasses import dataclass

import pytest

from webapp import create_app
from webapp.tasks import TaskProcessor, TaskResult
from webapp.tasks.errors import InvalidPayload, RegistryError
from webapp.tasks.registry import ProcessorRegistry, payload_from_json


def test_modules_register_every_concrete_processor():
    registry = ProcessorRegistry()
    registry.load_modules(["tests.processors"])
    assert {"NOOP", "SLEEP", "FLAKY", "ORDER", "FATAL"} <= set(registry.task_types())
    assert registry.get("NOOP").get_task_type() == "NOOP"


def test_duplicate_task_type_is_a_startup_error(tmp_path):
    with pytest.raises(RegistryError, match="two processors for task type 'NOOP'"):
        create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db",
                    "ASYNC_TASK_PROCESSORS": ["tests.processors", "tests.plugins.duplicate_noop"]})


def test_unimportable_module_names_itself():
    with pytest.raises(RegistryError, match="no.such.module"):
        ProcessorRegistry().load_modules(["no.such.module"])


def test_processor_without_task_type_is_refused():
    class Nameless(TaskProcessor):
        def process(self, task, payload):
            return TaskResult.success()

    with pytest.raises(NotImplementedError):
        ProcessorRegistry().register(Nameless())


@dataclass
class Shape:
    name: str
    size: int
    ratio: float = 1.0
    tags: list[str] | None = None


def test_payload_type_builds_the_dataclass():
    shape = payload_from_json(Shape, {"name": "a", "size": 2, "tags": ["x"]})
    assert shape == Shape("a", 2, 1.0, ["x"])


@pytest.mark.parametrize("data,field", [
    ({"size": 2}, "payload.name"),
    ({"name": "a", "size": "2"}, "payload.size"),
    ({"name": "a", "size": True}, "payload.size"),
    ({"name": "a", "size": 2, "colour": "red"}, "payload.colour"),
    ({"name": "a", "size": 2, "tags": [1]}, "payload.tags"),
])
def test_payload_type_names_the_bad_field(data, field):
    with pytest.raises(InvalidPayload) as caught:
        payload_from_json(Shape, data)
    assert caught.value.field == field
