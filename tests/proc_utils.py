"""Helpers for the process-level tests: worker subprocesses, a private redis-server, run logs."""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.conftest import ROOT, wait_until

FLASK = str(ROOT / ".venv" / "bin" / "flask")
# Settings a developer's shell may carry; the workers get exactly what the test gives them.
SCRUBBED_PREFIXES = ("ASYNC_TASK_", "FLASK_")
SCRUBBED_NAMES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PROC_RUN_LOG", "LOG_LEVEL")


def free_port() -> int:
    """A TCP port nobody listens on right now, below the kernel's ephemeral port range.

    A port inside that range can be picked as the source port of a client that keeps
    reconnecting to it after its server died; the client then connects to itself (TCP
    simultaneous open) and takes its own echoed commands for a live server's answers.
    """
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(200):
        port = random.randrange(20000, max(20001, ephemeral_low))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def worker_environment(database_url: str, *, redis_url: str | None, lock_prefix: str,
                       run_log: Path, tmp_path: Path, **settings: Any) -> dict[str, str]:
    """The environment of a ``flask tasks worker`` subprocess, with short test intervals."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(SCRUBBED_PREFIXES) and name not in SCRUBBED_NAMES}
    env.update({
        "FLASK_APP": "webapp",
        "FLASK_SKIP_DOTENV": "1",
        "DOTENV_PATH": str(tmp_path / "no-such.env"),
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
        "SECRET_KEY": "proc-test-secret-5f0e9d8c7b6a5f4e3d2c1b0a",
        "DATABASE_URL": database_url,
        "ASYNC_TASK_PROCESSORS": "tests.proc_processors",
        "ASYNC_TASK_REDIS_LOCK_PREFIX": lock_prefix,
        "ASYNC_TASK_HEARTBEAT_INTERVAL": "0.5",
        "ASYNC_TASK_POLL_INTERVAL": "0.2",
        "ASYNC_TASK_SHUTDOWN_GRACE": "5",
        "PROC_RUN_LOG": str(run_log),
    })
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update({name: str(value) for name, value in settings.items()})
    return env


@dataclass
class WorkerProcess:
    """One ``flask tasks worker`` subprocess and the file its output goes to."""

    name: str
    log_path: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    expected_exit: bool = False  # the test stopped or killed it on purpose

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def send(self, signum: int) -> None:
        """Send a signal unless the process has already exited (a stop signal marks it expected)."""
        if signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
            self.expected_exit = True
        if self.process.poll() is None:
            os.kill(self.pid, signum)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit and return its exit code (fails after ``timeout``)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.name} (pid {self.pid}) did not exit within {timeout}s") from None

    def kill(self) -> None:
        """Stop it for good, whatever state it is in (resumed first in case it was paused)."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log_file.close()


@dataclass
class ProcessPool:
    """Starts worker subprocesses for one test and makes sure none outlives it."""

    tmp_path: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, name: str, env: dict[str, str], concurrency: int = 4) -> WorkerProcess:
        """Start ``flask tasks worker --concurrency N`` from the repository root."""
        log_path = self.tmp_path / f"worker-{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            [FLASK, "tasks", "worker", "--concurrency", str(concurrency)],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        worker = WorkerProcess(name, log_path, process, log_file)
        self.workers.append(worker)
        return worker

    def by_pid(self, pid: int) -> WorkerProcess:
        """The worker with that process id."""
        for worker in self.workers:
            if worker.pid == pid:
                return worker
        raise AssertionError(f"no worker of this test has pid {pid}")

    def assert_alive(self) -> None:
        """Fail at once (with the worker's log) if a worker died on its own."""
        for worker in self.workers:
            code = worker.process.poll()
            if code is not None and not worker.expected_exit:
                raise AssertionError(f"worker {worker.name} exited early with code {code}:\n"
                                     f"{tail(worker.log_text())}")

    def all_logs(self) -> str:
        """The output of every worker, concatenated."""
        return "\n".join(worker.log_text() for worker in self.workers)

    def shutdown(self) -> None:
        """SIGTERM every worker still running, then SIGKILL what did not stop in time."""
        for worker in self.workers:
            if worker.process.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)
                os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            worker.kill()

    def print_logs(self, lines: int = 150) -> None:
        """Print the end of every worker's log (shown by pytest when the test failed)."""
        for worker in self.workers:
            print(f"\n===== worker {worker.name} (pid {worker.pid}, exit "
                  f"{worker.process.returncode}) {worker.log_path} =====")
            print(tail(worker.log_path.read_text(errors="replace"), lines))


def tail(text: str, lines: int = 150) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


class RedisServer:
    """A private ``redis-server`` on a free port, without persistence, that a test may kill."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.tmp_path = tmp_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it (again, on the same port) and wait until it answers PING."""
        import redis

        log = (self.tmp_path / f"redis-{self.port}.log").open("ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(answers, timeout=10, message=f"private redis-server on port {self.port}")
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL it: an abrupt outage, connections reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass(frozen=True)
class RunRecord:
    """One line of the processors' run log."""

    event: str
    task_id: int
    attempt: int
    pid: int


def read_run_log(path: Path) -> list[RunRecord]:
    """Every ``start``/``done`` line the processors appended, in order."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        event, task_id, attempt, pid = line.split()
        records.append(RunRecord(event, int(task_id), int(attempt), int(pid)))
    return records


def count_runs(records: list[RunRecord], event: str) -> collections.Counter[int]:
    """How many times each task id has a line of that event (``start`` or ``done``)."""
    return collections.Counter(record.task_id for record in records if record.event == event)
