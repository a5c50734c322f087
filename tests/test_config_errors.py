"""A bad setting stops start-up with one line naming the setting and the fix, not a traceback
(issue 16 item 9), from the command line and from the WSGI entry point alike."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from webapp.config import ConfigError, load_settings

FLASK = str(ROOT / ".venv" / "bin" / "flask")


@pytest.mark.parametrize("command", [
    [FLASK, "--app", "webapp", "tasks", "list"],
    [sys.executable, "-c", "import wsgi"],
])
def test_a_bad_setting_prints_one_line_and_exits_1(command: list[str], tmp_path) -> None:
    env = {**os.environ, "ASYNC_TASK_POLL_INTERVAL": "soon", "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3"}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "Configuration error: ASYNC_TASK_POLL_INTERVAL: invalid value 'soon' (expected a number); "
        "correct it, or unset it for the default 5.0"]


def test_the_error_is_still_a_value_error_for_code_that_catches_one(tmp_path) -> None:
    with pytest.raises(ValueError, match="ASYNC_TASK_BATCH_SIZE: invalid value '2.5' \\(expected a whole number\\)"):
        load_settings(str(tmp_path), environ={"ASYNC_TASK_BATCH_SIZE": "2.5"})
    assert issubclass(ConfigError, ValueError)
