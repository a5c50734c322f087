"""What a notification recipient must look like: a plain mail address, an absolute http(s) URL.

Pure checks, no I/O: the engine calls them at submit, composing calls them when it writes a
row, and the senders call them again before sending. Whether a webhook's host may be reached is
decided at send time (``webhook.resolve_webhook_target``), when its addresses are known.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from ..tasks.errors import ValidationError

# Used with fullmatch: "$" would also match before a final newline ("a@example.com\n").
EMAIL_PATTERN = re.compile(r"[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                           r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
MAX_EMAIL_ADDRESS = 254
MAX_RECIPIENT = 2000


def is_email_address(value: str | None) -> bool:
    """A single plain address (``user@example.com``), no display name, no list."""
    return (bool(value) and len(value or "") <= MAX_EMAIL_ADDRESS
            and EMAIL_PATTERN.fullmatch(value or "") is not None)


def validate_webhook_url(url: Any, field: str = "notify_url") -> str:
    """An absolute http(s) URL with a host; whether private hosts are allowed is checked at send."""
    if not isinstance(url, str) or not url or len(url) > MAX_RECIPIENT:
        raise ValidationError(f"{field} must be an http(s) URL of at most {MAX_RECIPIENT} characters",
                              field=field)
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise ValidationError(f"{field} must not contain spaces or control characters", field=field)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"{field} is not a valid URL ({exc})", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{field} must be an absolute http(s) URL, got {url!r}", field=field)
    if port == 0:
        raise ValidationError(f"{field} has an invalid port 0", field=field)
    return url
