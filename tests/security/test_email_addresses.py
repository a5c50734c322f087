"""Issue 10 item 21: an email address with a trailing newline is not an address.

The pattern used ``$``, which also matches just before a final ``\\n``; a creator typed as
``victim@example.com\\n`` then passed the check and reached the mail headers.
"""

from __future__ import annotations

import pytest

from webapp.notifications.addresses import is_email_address


@pytest.mark.parametrize("value", [
    "creator@example.com\n", "creator@example.com\r\n", "creator@example.com\r", "\ncreator@example.com",
    "creator@example.com\nBcc: other@example.com",
])
def test_line_breaks_anywhere_are_refused(value):
    assert not is_email_address(value)


def test_a_plain_address_still_passes():
    assert is_email_address("creator@example.com")
