"""The password policy: at least 12 characters, not a common password, not the username.

The common passwords ship with the package (``common_passwords.txt``, about 8,300 entries of 8
characters or more). A password is refused when it, lower-cased, is on the list, or when what
is left after stripping trailing digits and symbols is (``Baseball2026!`` is ``baseball``
with a suffix, and guessing tools try exactly that first).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from ..tasks.errors import ValidationError

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # hashing a megabyte of "password" is work an attacker should not get for free
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")
_TRAILING_DIGITS_AND_SYMBOLS = re.compile(r"[\d\W_]+$")


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lower case (read once per process)."""
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip().lower() for line in lines if line.strip() and not line.startswith("#"))


def is_common_password(password: str) -> bool:
    """Whether ``password`` is a common one, as typed or with a digit/symbol suffix removed."""
    lowered = password.lower()
    core = _TRAILING_DIGITS_AND_SYMBOLS.sub("", lowered)
    listed = common_passwords()
    return lowered in listed or (len(core) >= 8 and core in listed)


def validate_password(password: object, username: str | None = None) -> str:
    """A password the policy accepts; a ValidationError on the ``password`` field says why not."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"password must have at least {MIN_PASSWORD_LENGTH} characters",
                              field="password")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(f"password must have at most {MAX_PASSWORD_LENGTH} characters",
                              field="password")
    if username and password.strip().lower() == username.strip().lower():
        raise ValidationError("password must not be the username", field="password")
    if is_common_password(password):
        raise ValidationError("password is too common: it is on the list of passwords attackers try "
                              "first; choose another", field="password")
    return password
