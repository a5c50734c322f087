"""Names and cursors refuse a trailing newline (``$`` in a pattern lets one through; ``\\Z`` does not).

The same class of bug as the e-mail check of issue 10 item 21: ``re.match(r"^x$", "x\\n")``
matches, so a token named ``"billing\\n"`` or a cursor ending in a newline used to pass.
"""

from __future__ import annotations

import pytest

from webapp.accounts.tokens import (
    ADDRESS_PATTERN,
    DOMAIN_PATTERN,
    TOKEN_NAME_PATTERN,
    TokenError,
    validate_token_name,
)
from webapp.accounts.users import USERNAME_PATTERN
from webapp.api.parsing import CURSOR_PATTERN
from webapp.schedules.definition import NAME_PATTERN as SCHEDULE_NAME_PATTERN
from webapp.tasks.errors import ValidationError
from webapp.tasks.validation import validate_task_id


@pytest.mark.parametrize("pattern, good", [
    (USERNAME_PATTERN, "alice"),
    (TOKEN_NAME_PATTERN, "billing-service"),
    (SCHEDULE_NAME_PATTERN, "nightly-report"),
    (CURSOR_PATTERN, "abc123"),
    (DOMAIN_PATTERN, "example.com"),
    (ADDRESS_PATTERN, "ops@example.com"),
])
def test_pattern_takes_the_value_but_not_with_a_trailing_newline(pattern, good):
    assert pattern.match(good)
    assert pattern.match(good + "\n") is None


def test_token_name_with_a_trailing_newline_is_refused():
    assert validate_token_name("billing") == "billing"
    with pytest.raises(TokenError):
        validate_token_name("billing\n")



@pytest.mark.parametrize("value", ["²", "³", "¹0"])
def test_number_fields_refuse_digits_int_cannot_read(value):
    """``"²".isdigit()`` is true but ``int("²")`` raises: such input is a 422, never a 500."""
    with pytest.raises(ValidationError):
        validate_task_id(value)
