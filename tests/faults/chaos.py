"""The moving parts of the chaos run (tests/faults/test_chaos.py): API clients under load,
the fault injector and the mail clock. Everything random comes from seeded ``random.Random``
instances, so one seed gives one schedule of faults and one sequence of submits.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import random
import signal
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from tests.chaos_processors import CHAOS_TYPE, OUTCOMES
from tests.faults.support import STALE_THRESHOLD, Gunicorn, Supervisor, terminate_connections
from tests.proc_utils import RedisServer
from tests.smtp_server import ReceivedMail, SMTPServer

SUBMITTERS = 3
CREATORS = tuple(f"creator{n}@chaos.example" for n in range(8))
SUBMIT_PATIENCE = 60.0  # seconds a client keeps retrying one submit before giving it up
FAULT_GAP = (0.8, 3.0)  # seconds between two faults
FAULT_WEIGHTS = {"kill -9": 3, "SIGSTOP": 3, "redis kill": 2, "pg_terminate_backend": 2,
                 "gunicorn kill -9": 1}
PAUSE_SECONDS = (STALE_THRESHOLD + 0.5, STALE_THRESHOLD + 3.5)  # past the 3 missed heartbeats
REDIS_DOWN_SECONDS = (0.5, 4.0)


def chaos_seed() -> int:
    """``CHAOS_SEED`` when set (to repeat a run), else a fresh one."""
    text = os.environ.get("CHAOS_SEED", "").strip()
    return int(text) if text else random.SystemRandom().randrange(2**31)


# -- the API under load -------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """A submit the API acknowledged (202 new, 200 an idempotent repeat) and what was sent."""

    key: str
    task_id: int
    status: int
    creator: str
    payload: dict[str, Any]


@dataclass
class ApiLoad:
    """Client threads submitting over HTTP, each submit retried with its key until acknowledged."""

    base_url: str
    token: str
    seed: int
    threads: int = SUBMITTERS
    acks: dict[str, Ack] = field(default_factory=dict)
    given_up: list[str] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)  # every key submitted at least once
    refused: list[str] = field(default_factory=list)  # 4xx answers to valid requests
    crashes: list[str] = field(default_factory=list)  # client threads that died (a test bug)
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> ApiLoad:
        """Start the client threads."""
        for index in range(self.threads):
            thread = threading.Thread(target=self._client, args=(index,), name=f"api-client-{index}",
                                      daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> None:
        """Submit nothing new; the submit in hand is still retried until acknowledged."""
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=SUBMIT_PATIENCE + 30)
        assert not any(thread.is_alive() for thread in self._workers), "an API client thread hangs"

    def _client(self, index: int) -> None:
        try:
            self._submit_until_stopped(index)
        except Exception:
            with self._lock:
                self.crashes.append(traceback.format_exc())

    def _submit_until_stopped(self, index: int) -> None:
        rng = random.Random(f"{self.seed}-api-{index}")
        number = 0
        while not self._stop.is_set():
            number += 1
            key = f"chaos-{index}-{number}"
            creator = rng.choice(CREATORS)
            payload = {
                "seconds": rng.choice((0, 0, 0.02, 0.05, 0.1, 0.3, 1.0)),
                "outcome": rng.choices(tuple(OUTCOMES), weights=(8, 1, 1))[0],
                "write_db": rng.random() < 0.6,
            }
            ack = self._submit(key, creator, payload)
            if ack is not None and rng.random() < 0.3:
                self._call("GET", f"/api/tasks/{ack.task_id}")  # reads in the mix
            self._stop.wait(rng.uniform(0.05, 0.3))

    def _submit(self, key: str, creator: str, payload: dict[str, Any]) -> Ack | None:
        body = {"task_type": CHAOS_TYPE, "payload": payload, "created_by": creator, "idempotency_key": key}
        with self._lock:
            self.sent.add(key)
        deadline = time.monotonic() + SUBMIT_PATIENCE
        while time.monotonic() < deadline:
            status, answer = self._call("POST", "/api/tasks", body)
            if status in (200, 202) and answer is not None:
                ack = Ack(key, int(answer["id"]), status, creator, payload)
                with self._lock:
                    self.acks[key] = ack
                return ack
            if status is not None and 400 <= status < 500:
                with self._lock:
                    self.refused.append(f"{key}: {status} {answer}")
                return None
            time.sleep(random.uniform(0.1, 0.5))  # unanswered or 5xx: the same key again
        with self._lock:
            self.given_up.append(key)
        return None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int | None, Any]:
        """One request; (status, JSON answer). Status ``None``: no answer at all."""
        request = urllib.request.Request(
            self.base_url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            try:
                with urllib.request.urlopen(request, timeout=15) as reply:
                    status, kind, raw = reply.status, reply.headers.get_content_type(), reply.read()
            except urllib.error.HTTPError as exc:
                status, kind, raw = exc.code, exc.headers.get_content_type(), exc.read()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, cut short
            self._count(f"{method} no answer ({type(exc).__name__})")
            return None, None
        if kind != "application/json":
            self._count(f"{method} {status} {kind}")
            return status, None
        self._count(f"{method} {status}")
        try:
            return status, json.loads(raw)
        except ValueError:
            self._count(f"{method} {status} unreadable JSON")
            return status, None

    def _count(self, what: str) -> None:
        with self._lock:
            self.answers[what] += 1


# -- the faults ---------------------------------------------------------------------------------


@dataclass
class FaultInjector:
    """Injects one random fault every ``FAULT_GAP`` seconds for a while, then heals everything.

    Every random number is drawn whatever the machine's state, so one seed gives one schedule.
    """

    rng: random.Random
    supervisor: Supervisor
    redis: RedisServer
    gunicorn: Gunicorn
    pg_url: str
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    log: list[tuple[float, str, str]] = field(default_factory=list)  # (monotonic time, kind, target)
    killed_pids: set[int] = field(default_factory=set)
    _paused: dict[int, float] = field(default_factory=dict)  # pid -> when to resume
    _redis_back_at: float | None = None

    def run(self, seconds: float) -> None:
        """Inject faults for ``seconds``, then resume every paused worker and restart Redis."""
        end = time.monotonic() + seconds
        next_fault = time.monotonic() + self.rng.uniform(*FAULT_GAP)
        try:
            while (now := time.monotonic()) < end:
                self._heal(now)
                if now >= next_fault:
                    self._inject()
                    next_fault = time.monotonic() + self.rng.uniform(*FAULT_GAP)
                time.sleep(0.05)
        finally:
            self._heal(float("inf"))

    def _inject(self) -> None:
        kind = self.rng.choices(tuple(FAULT_WEIGHTS), weights=tuple(FAULT_WEIGHTS.values()))[0]
        slot = self.rng.randrange(self.supervisor.slots)
        pause = self.rng.uniform(*PAUSE_SECONDS)
        outage = self.rng.uniform(*REDIS_DOWN_SECONDS)
        target = {"kill -9": lambda: self._kill_worker(slot),
                  "SIGSTOP": lambda: self._pause_worker(slot, pause),
                  "redis kill": lambda: self._kill_redis(outage),
                  "pg_terminate_backend": lambda: f"{terminate_connections(self.pg_url)} connections",
                  "gunicorn kill -9": lambda: self._kill_gunicorn_worker(slot)}[kind]()
        if target is None:
            self.skipped[kind] += 1
            return
        self.injected[kind] += 1
        self.log.append((time.monotonic(), kind, target))

    def worker_kills(self) -> list[tuple[float, int]]:
        """(time, pid) of every ``kill -9`` of a task worker."""
        return [(at, int(target)) for at, kind, target in self.log if kind == "kill -9"]

    def _kill_worker(self, slot: int) -> str | None:
        worker = self.supervisor.current[slot]
        if worker.process.poll() is not None:
            return None
        worker.send(signal.SIGKILL)
        self.killed_pids.add(worker.pid)
        self._paused.pop(worker.pid, None)
        return str(worker.pid)

    def _pause_worker(self, slot: int, seconds: float) -> str | None:
        worker = self.supervisor.current[slot]
        if worker.pid in self._paused or worker.process.poll() is not None:
            return None
        os.kill(worker.pid, signal.SIGSTOP)
        self._paused[worker.pid] = time.monotonic() + seconds
        return f"{worker.pid} for {seconds:.1f}s"

    def _kill_redis(self, seconds: float) -> str | None:
        if self._redis_back_at is not None:
            return None
        self.redis.kill()
        self._redis_back_at = time.monotonic() + seconds
        return f"down {seconds:.1f}s"

    def _kill_gunicorn_worker(self, slot: int) -> str | None:
        pids = sorted(self.gunicorn.worker_pids())
        if not pids:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[slot % len(pids)], signal.SIGKILL)
        return str(pids[slot % len(pids)])

    def _heal(self, now: float) -> None:
        for pid, resume_at in list(self._paused.items()):
            if resume_at <= now:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
                del self._paused[pid]
        if self._redis_back_at is not None and self._redis_back_at <= now:
            self.redis.start()
            self._redis_back_at = None


# -- mail arrival times -------------------------------------------------------------------------


class MailClock:
    """Notes when each mail reached the SMTP server (to 0.05 s), by polling it from a thread."""

    def __init__(self, server: SMTPServer) -> None:
        self.server = server
        self.seen_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mail-clock", daemon=True)

    def start(self) -> MailClock:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self._catch_up()

    def _catch_up(self) -> None:
        count = len(self.server.received())
        now = time.monotonic()
        self.seen_at.extend(now for _ in range(count - len(self.seen_at)))

    def stop(self) -> list[tuple[float, ReceivedMail]]:
        """Stop watching; every mail with the time it was first seen."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._catch_up()
        return list(zip(self.seen_at, self.server.received(), strict=False))
