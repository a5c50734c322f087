"""The ``pool`` fixture: worker subprocesses of one test, stopped at its end, their logs printed on failure.

A plugin module (listed in ``tests/conftest.py``'s ``pytest_plugins``) rather than part of the
conftest, because ``proc_utils`` itself imports from the conftest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proc_utils import ProcessPool

LOG_LINES_ON_FAILURE = 150


@pytest.fixture
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessPool]:
    """Worker subprocesses of this test; all stopped at the end, their logs printed on failure."""
    failed_before = request.session.testsfailed
    processes = ProcessPool(tmp_path)
    yield processes
    processes.shutdown()
    if request.session.testsfailed > failed_before:
        processes.print_logs(LOG_LINES_ON_FAILURE)
