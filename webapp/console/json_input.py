"""JSON typed into the console (edit and retry), held to the JSON API's limits.

The limits themselves (nesting depth, text the databases can store) are the API's
(``webapp.api.parsing``): a payload the API would refuse is refused here with the same words,
and a deeply nested one never reaches the service (or exhausts the stack).
"""

from __future__ import annotations

import json
from typing import Any

from flask_babel import gettext

from ..api.errors import ApiError
from ..api.parsing import MAX_JSON_DEPTH, check_json_document
from ..tasks.errors import ValidationError


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_text(text: str, field: str = "payload") -> Any:
    """The document in ``text``; a ValidationError on ``field`` (translated) says what is wrong and where."""
    try:
        document = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValidationError(gettext("The payload is nested more than %(depth)s levels deep.",
                                      depth=MAX_JSON_DEPTH), field=field) from None
    except ValueError as exc:
        problem = getattr(exc, "msg", str(exc))
        where = (gettext(" (line %(line)s, column %(column)s)", line=exc.lineno, column=exc.colno)
                 if isinstance(exc, json.JSONDecodeError) else "")
        raise ValidationError(gettext("The payload is not valid JSON: %(problem)s%(where)s.",
                                      problem=problem, where=where), field=field) from None
    try:
        check_json_document(document)
    except ApiError as exc:
        raise ValidationError(exc.message, field=f"{field}.{exc.field}" if exc.field else field) from None
    except ValidationError as exc:
        raise ValidationError(exc.message, field=f"{field}.{exc.field}" if exc.field else field) from None
    return document
