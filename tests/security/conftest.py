"""The browser tests' Chromium fixture, shared with the XSS browser pass (nothing is downloaded)."""

from tests.browser.conftest import browser  # noqa: F401  (a module-scoped fixture, reused here)
