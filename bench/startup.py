"""9. Start-up: a ``flask`` command and ``make run``'s second start, against importing Flask and
SQLAlchemy in the same run.

Three wall times, best of three each, on a migrated SQLite database:

* ``python -c "import flask, sqlalchemy"``: the floor any Flask + SQLAlchemy command pays;
* ``flask --app webapp tasks list``: a command that reads the database and prints;
* ``make run``'s second start: from starting the command ``make run`` runs (``python -m
  webapp.devserver`` with ``make run``'s environment, on a free port) to the first 200 of
  ``/login``. A first start (schema, first login, example tasks) runs once before, untimed.

Python writes bytecode as on a user's machine (into a scratch ``PYTHONPYCACHEPREFIX``, so the
checkout is not touched) and one untimed run warms it: the figures are what a user sees from
the second run on. The same three without bytecode (``PYTHONDONTWRITEBYTECODE=1``, every module
of the project compiled at each start) are printed too, as a note.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .common import ROOT, Context, free_port, sqlite_database, wait_for

NAME = "startup"
REPEATS = 3
SERVER_TIMEOUT = 120.0


def _env(ctx: Context, url: str, bytecode: bool) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ASYNC_TASK_", "FLASK_")) and name not in (
               "REDIS_URL", "DATABASE_URL", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "SECRET_KEY")}
    env.update({"DATABASE_URL": url, "DOTENV_PATH": os.devnull, "ASYNC_TASK_PROCESSORS": "webapp.examples",
                "ASYNC_TASK_DEV_MAIL_DIR": str(ctx.scratch / "dev-mail"), "ASYNC_TASK_POLL_INTERVAL": "1"})
    if bytecode:
        env["PYTHONPYCACHEPREFIX"] = str(ctx.scratch / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _time_command(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return elapsed


def _ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return int(reply.status) == 200
    except Exception:
        return False


def _time_server_start(ctx: Context, env: dict[str, str], label: str) -> float:
    """Seconds from starting ``make run``'s command to the first 200 of ``/login``."""
    port = free_port()
    argv = [sys.executable, "-m", "webapp.devserver", "--host", "127.0.0.1", "--port", str(port)]
    env = {**env, "ASYNC_TASK_BASE_URL": f"http://127.0.0.1:{port}"}
    log_path = ctx.scratch / f"devserver-{label}.log"
    with log_path.open("wb") as log:
        began = time.perf_counter()
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            def ready() -> bool:
                if server.poll() is not None:
                    raise RuntimeError(f"the server exited early:\n{log_path.read_text(errors='replace')[-2000:]}")
                return _ok(f"http://127.0.0.1:{port}/login")

            wait_for(ready, SERVER_TIMEOUT, "make run's server to answer /login", interval=0.02)
            return time.perf_counter() - began
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)


def _measure(ctx: Context, url: str, bytecode: bool) -> dict[str, float]:
    env = _env(ctx, url, bytecode)
    python = [sys.executable]
    flask = [str(Path(sys.executable).with_name("flask")), "--app", "webapp"]
    commands = {
        "import": [*python, "-c", "import flask, sqlalchemy"],
        "list": [*flask, "tasks", "list"],
    }
    # Untimed: bytecode written, the first run's schema, login and example tasks made.
    for argv in commands.values():
        _time_command(argv, env)
    _time_server_start(ctx, env, "first")
    best: dict[str, float] = {}
    for round_ in range(REPEATS if not ctx.quick else 1):
        for name, argv in commands.items():  # interleaved: a load spike hits every figure alike
            best[name] = min(best.get(name, float("inf")), _time_command(argv, env))
        best["server"] = min(best.get("server", float("inf")), _time_server_start(ctx, env, f"r{round_}"))
    return best


def run(ctx: Context) -> None:
    url = sqlite_database(ctx, "startup")
    cold = _measure(ctx, sqlite_database(ctx, "startup-nobytecode"), bytecode=False)
    warm = _measure(ctx, url, bytecode=True)
    note = (f"without bytecode: import {cold['import']:.2f} s, tasks list {cold['list']:.2f} s "
            f"({cold['list'] / cold['import']:.2f}x), make run {cold['server']:.2f} s "
            f"({cold['server'] / cold['import']:.2f}x)")
    ctx.add(NAME, "python -c 'import flask, sqlalchemy'", warm["import"], "s")
    ctx.add(NAME, "flask --app webapp tasks list", warm["list"], "s")
    ctx.add(NAME, "tasks list / import flask, sqlalchemy", warm["list"] / warm["import"], "x")
    ctx.add(NAME, "make run second start, to the first /login 200", warm["server"], "s")
    ctx.add(NAME, "make run second start / import flask, sqlalchemy", warm["server"] / warm["import"], "x",
            note=note)
