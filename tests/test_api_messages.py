"""API error messages in JSON words (issue 16 item 12): ``true``, ``an array``, not Python's
``True`` or ``list``; the 413 answer states the limit in bytes, not a setting's name."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from webapp.accounts.tokens import create_token


def _post(app: Flask, body: Any, **kwargs: Any) -> Any:
    with app.app_context():
        _, secret = create_token(f"messages-{id(body)}")
    return app.test_client().post("/api/tasks", json=body, headers={"Authorization": f"Bearer {secret}"}, **kwargs)


@pytest.mark.parametrize("body,field,words", [
    ({"task_type": "NOOP", "payload": [1, 2]}, "payload", "payload must be a JSON object, got an array"),
    ({"task_type": "ORDER", "payload": {"customer": "acme", "amount": True}}, "payload.amount", "got a boolean"),
    ({"task_type": "ORDER", "payload": {"customer": ["x"], "amount": 1}}, "payload.customer", "got an array"),
    ({"task_type": "NOOP", "payload": {}, "run_at": "soon"}, "run_at", 'must be an ISO-8601 time, got "soon"'),
])
def test_messages_use_json_words(make_app, body: dict[str, Any], field: str, words: str) -> None:
    app = make_app("sqlite")
    answer = _post(app, body)
    assert answer.status_code == 422
    error = answer.get_json()["error"]
    assert error["field"] == field and words in error["message"], error
    for python_word in ("True", "False", "None", "list", "dict", "bool", "str"):
        assert f"got {python_word}" not in error["message"]


def test_a_body_over_the_limit_is_told_the_limit_in_bytes(make_app) -> None:
    app = make_app("sqlite", MAX_CONTENT_LENGTH=2048)
    answer = _post(app, {"task_type": "NOOP", "payload": {"blob": "x" * 5000}})
    assert answer.status_code == 413
    message = answer.get_json()["error"]["message"]
    assert message == "request body is larger than the limit of 2,048 bytes"
