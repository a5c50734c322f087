"""A randomised fault run (issue 10, "A chaos test of our own").

Four ``flask tasks worker`` processes (kept at four by a supervisor, as systemd would) drain
tasks on the run's PostgreSQL database with a Redis of the test's own, while client threads
submit over the JSON API (gunicorn, two workers) with idempotency keys, retrying each submit
until it is acknowledged, and every finished task mails its creator through a real SMTP server
(aiosmtpd). For ``CHAOS_SECONDS`` (60 by default) a seeded RNG injects, every 0.8 to 3 s, one of:
``kill -9`` of a worker, SIGSTOP of a worker past its heartbeat (then SIGCONT), a Redis kill
(restarted a few seconds later), ``pg_terminate_backend`` of every connection to the test's
database, and ``kill -9`` of a gunicorn worker. Then the faults stop and the test checks:

* every acknowledged submit exists (its key, creator and payload), one task per key;
* every task ends within a bounded wait, in the status its payload asks for;
* nothing succeeds twice: one terminal event per task, one committed processor row per
  SUCCESS task that writes one and none otherwise;
* ``attempts`` equals the processor's executions plus at most one per crash (an attempt
  recovered or released, not one given back for a Redis lock), and no attempt ran twice;
* every finished task's creator got exactly one mail; a second copy only of a mail whose first
  copy arrived just before a worker was killed (sent, not yet recorded), with the same
  Message-ID.

The seed is printed first; ``CHAOS_SEED=<seed>`` repeats the same schedule of faults and the
same submits (the machine's timing still differs). ``CHAOS_SECONDS=600`` runs longer. The
summary is printed as ``FIGURE chaos: ...``: ``pytest -q -rP tests/faults/test_chaos.py``.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import random
import re
import signal
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from tests.chaos_processors import CHAOS_TYPE, OUTCOMES, RUN_DIR_ENV
from tests.conftest import wait_until
from tests.faults.support import (
    STALE_THRESHOLD,
    Gunicorn,
    Supervisor,
    committed_runs,
    status_counts,
    terminate_connections,
    wait_for,
)
from tests.proc_utils import ProcessPool, RedisServer, RunRecord, free_port, read_run_log, tail
from tests.smtp_server import ReceivedMail, SMTPServer
from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks.models import AsyncTask, Notification, TaskEvent

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS") or 60)
WORKERS = 4
CONCURRENCY = 3
SUBMITTERS = 3
CREATORS = tuple(f"creator{n}@chaos.example" for n in range(8))
FAULT_GAP = (0.8, 3.0)  # seconds between two faults
FAULT_WEIGHTS = {"kill -9": 3, "SIGSTOP": 3, "redis kill": 2, "pg_terminate_backend": 2,
                 "gunicorn kill -9": 1}
PAUSE_SECONDS = (STALE_THRESHOLD + 0.5, STALE_THRESHOLD + 3.5)  # past the 3 missed heartbeats
REDIS_DOWN_SECONDS = (0.5, 4.0)
NOTIFY_TIMEOUT = 2.0
NOTIFY_LEASE = 12 * NOTIFY_TIMEOUT + 30  # the dispatcher's lease (webapp/tasks/delivery.py)
# A mail sent just before its worker was killed: the kill came at most this long after the
# copy arrived (recording SENT takes milliseconds, seconds on a loaded machine).
SENT_NOT_RECORDED_WINDOW = 5.0
SUBMIT_PATIENCE = 60.0  # seconds a client keeps retrying one submit before giving it up
DRAIN_TIMEOUT = 240.0
TERMINAL = ("SUCCESS", "FAILURE", "CANCELLED")


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
    worker_kills: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, pid)
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
        slot = self.rng.randrange(WORKERS)
        pause = self.rng.uniform(*PAUSE_SECONDS)
        outage = self.rng.uniform(*REDIS_DOWN_SECONDS)
        done = {"kill -9": lambda: self._kill_worker(slot),
                "SIGSTOP": lambda: self._pause_worker(slot, pause),
                "redis kill": lambda: self._kill_redis(outage),
                "pg_terminate_backend": lambda: terminate_connections(self.pg_url) > 0,
                "gunicorn kill -9": lambda: self._kill_gunicorn_worker(slot)}[kind]()
        (self.injected if done else self.skipped)[kind] += 1

    def _kill_worker(self, slot: int) -> bool:
        worker = self.supervisor.current[slot]
        if worker.process.poll() is not None:
            return False
        worker.send(signal.SIGKILL)
        self.worker_kills.append((time.monotonic(), worker.pid))
        self.killed_pids.add(worker.pid)
        self._paused.pop(worker.pid, None)
        return True

    def _pause_worker(self, slot: int, seconds: float) -> bool:
        worker = self.supervisor.current[slot]
        if worker.pid in self._paused or worker.process.poll() is not None:
            return False
        os.kill(worker.pid, signal.SIGSTOP)
        self._paused[worker.pid] = time.monotonic() + seconds
        return True

    def _kill_redis(self, seconds: float) -> bool:
        if self._redis_back_at is not None:
            return False
        self.redis.kill()
        self._redis_back_at = time.monotonic() + seconds
        return True

    def _kill_gunicorn_worker(self, slot: int) -> bool:
        pids = sorted(self.gunicorn.worker_pids())
        if not pids:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[slot % len(pids)], signal.SIGKILL)
        return True

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


# -- reading the outcome ------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything the checks read, after the run."""

    tasks: dict[int, AsyncTask]
    events: dict[int, list[TaskEvent]]
    notifications: dict[int, list[Notification]]  # task id -> its rows
    committed: collections.Counter[int]
    starts: list[RunRecord]


def read_outcome(app: Flask, run_dir: Path) -> Outcome:
    """Tasks, events, notifications and committed rows from the database; executions from the logs."""
    with app.app_context():
        try:
            tasks = {task.id: task for task in db.session.scalars(select(AsyncTask))}
            events: dict[int, list[TaskEvent]] = collections.defaultdict(list)
            for event in db.session.scalars(select(TaskEvent).order_by(TaskEvent.id)):
                events[event.task_id].append(event)
            notes: dict[int, list[Notification]] = collections.defaultdict(list)
            for note in db.session.scalars(select(Notification).order_by(Notification.id)):
                notes[note.task_id].append(note)
            db.session.expunge_all()
        finally:
            db.session.remove()
    starts = [record for path in sorted(run_dir.glob("runs-*.log")) for record in read_run_log(path)
              if record.event == "start"]
    return Outcome(tasks, dict(events), dict(notes), committed_runs(app), starts)


def unfinished_count(app: Flask) -> int:
    """Tasks not yet in a terminal status."""
    return sum(n for status, n in status_counts(app).items() if status not in TERMINAL)


def describe_unfinished(app: Flask, logs: str, run_dir: Path, limit: int = 5) -> str:
    """The first unfinished tasks with their events, executions and log lines, for a failure."""
    with app.app_context():
        try:
            tasks = db.session.scalars(select(AsyncTask).where(AsyncTask.status.not_in(TERMINAL))
                                       .order_by(AsyncTask.id).limit(limit)).all()
            events = {task.id: db.session.scalars(select(TaskEvent).where(TaskEvent.task_id == task.id)
                                                  .order_by(TaskEvent.id)).all() for task in tasks}
        finally:
            db.session.remove()
    records = [record for path in sorted(run_dir.glob("runs-*.log")) for record in read_run_log(path)]
    lines = []
    for task in tasks:
        mention = re.compile(rf"(task |\[|, ){task.id}\b")
        lines += [f"task {task.id} {task.status} attempts {task.attempts} worker {task.worker_id} "
                  f"updated {task.updated_at}",
                  f"  events {[(e.kind, e.attempt, e.worker_id, e.message) for e in events[task.id]]}",
                  f"  executions {[r for r in records if r.task_id == task.id]}",
                  *(f"  log: {line}" for line in logs.splitlines() if mention.search(line))][:40]
    return "\n".join(lines)


def wait_for_drain(app: Flask, pool: ProcessPool, run_dir: Path, seed: int) -> None:
    """Every task in a terminal status within DRAIN_TIMEOUT; else fail describing the stuck ones."""
    try:
        wait_until(lambda: unfinished_count(app) == 0, timeout=DRAIN_TIMEOUT, interval=0.5,
                   message="every task in a terminal status")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (CHAOS_SEED={seed}); counts {status_counts(app)}:\n"
                             f"{describe_unfinished(app, pool.all_logs(), run_dir)}") from None


def pending_notifications(app: Flask) -> int:
    """Notification rows still waiting to be sent (or being sent)."""
    with app.app_context():
        try:
            return len(db.session.scalars(select(Notification.id).where(Notification.status == "PENDING")).all())
        finally:
            db.session.remove()


# -- the checks ---------------------------------------------------------------------------------


def check_acknowledged(outcome: Outcome, load: ApiLoad) -> list[str]:
    """Every acknowledged submit exists as sent; no key has two tasks; no task without a submit."""
    acks = load.acks
    problems = list(load.crashes)
    by_key = collections.Counter(task.idempotency_key for task in outcome.tasks.values())
    problems += [f"key {key} has {n} tasks" for key, n in by_key.items() if n > 1]
    problems += [f"task {task.id} (key {task.idempotency_key}) was never submitted"
                 for task in outcome.tasks.values() if task.idempotency_key not in load.sent]
    for ack in acks.values():
        task = outcome.tasks.get(ack.task_id)
        if task is None:
            problems.append(f"acknowledged submit {ack.key} (task {ack.task_id}, {ack.status}) is missing")
        elif (task.idempotency_key, task.created_by, task.payload) != (ack.key, ack.creator, ack.payload):
            problems.append(f"task {task.id} is not what {ack.key} submitted: {task.idempotency_key}, "
                            f"{task.created_by}, {task.payload}")
    return problems


def check_ended(outcome: Outcome) -> list[str]:
    """Every task ended as its payload asked (or FAILURE for having been recovered too often)."""
    problems = []
    for task in outcome.tasks.values():
        wanted = OUTCOMES[task.payload["outcome"]]
        recovered_too_often = task.status == "FAILURE" and task.recovery_count > task.max_retry_count + 1
        if task.status != wanted and not recovered_too_often:
            problems.append(f"task {task.id} ({task.payload['outcome']}) ended {task.status}: {task.error}")
    return problems


def check_succeeded_once(outcome: Outcome) -> list[str]:
    """One terminal event per task; one committed processor row per SUCCESS task that writes one."""
    problems = []
    for task in outcome.tasks.values():
        kinds = [event.kind for event in outcome.events.get(task.id, [])]
        terminal = [kind for kind in kinds if kind in ("SUCCEEDED", "FAILED", "CANCELLED")]
        if len(terminal) != 1:
            problems.append(f"task {task.id} has terminal events {terminal}: {kinds}")
        rows = outcome.committed.get(task.id, 0)
        wanted = 1 if task.status == "SUCCESS" and task.payload["write_db"] else 0
        if rows != wanted:
            problems.append(f"task {task.id} ({task.status}, write_db={task.payload['write_db']}) "
                            f"committed {rows} processor rows")
    return problems


def crashes_of(events: list[TaskEvent]) -> int:
    """Attempts of the task that ended without an outcome: recovered or released, except
    claims given back because another attempt's Redis lock was still held (not attempts)."""
    return sum(1 for event in events
               if event.kind == "RECOVERED"
               or (event.kind == "RELEASED" and "lock" not in (event.message or "").lower()))


def check_attempts(outcome: Outcome) -> list[str]:
    """``attempts`` = executions + at most one per crash; no attempt executed twice."""
    problems = []
    executions = collections.Counter(record.task_id for record in outcome.starts)
    per_attempt = collections.Counter((record.task_id, record.attempt) for record in outcome.starts)
    problems += [f"task {task_id} attempt {attempt} executed {n} times"
                 for (task_id, attempt), n in per_attempt.items() if n > 1]
    for task in outcome.tasks.values():
        ran = executions.get(task.id, 0)
        crashes = crashes_of(outcome.events.get(task.id, []))
        if not ran <= task.attempts <= ran + crashes:
            kinds = [(event.kind, event.message) for event in outcome.events.get(task.id, [])]
            problems.append(f"task {task.id}: attempts {task.attempts}, executions {ran}, crashes "
                            f"{crashes}: {kinds}")
    return problems


@dataclass
class MailReport:
    """What the mail check found, for the summary."""

    mails: int
    duplicates: list[str]
    problems: list[str]


def check_mails(outcome: Outcome, mails: list[tuple[float, ReceivedMail]],
                worker_kills: list[tuple[float, int]]) -> MailReport:
    """Each finished task's creator got one mail; a repeat only right after a worker kill."""
    problems, duplicates = [], []
    by_task: dict[int, list[tuple[float, ReceivedMail]]] = collections.defaultdict(list)
    for seen, mail in mails:
        by_task[int(mail.message["X-Taskdeck-Task-Id"] or 0)].append((seen, mail))
    problems += [f"{len(copies)} mail(s) for task {task_id}, which does not exist"
                 for task_id, copies in by_task.items() if task_id not in outcome.tasks]
    for task in outcome.tasks.values():
        copies = by_task.get(task.id, [])
        notes = outcome.notifications.get(task.id, [])
        if task.status not in ("SUCCESS", "FAILURE"):
            if copies or notes:
                problems.append(f"task {task.id} ended {task.status} yet has {len(notes)} notification(s)")
            continue
        if [(note.recipient, note.status) for note in notes] != [(task.created_by, "SENT")]:
            problems.append(f"task {task.id}: notifications {[(n.id, n.recipient, n.status) for n in notes]}")
            continue
        note = notes[0]
        wrong = [mail for _, mail in copies if mail.rcpt_tos != (task.created_by,)
                 or mail.message["X-Taskdeck-Notification-Id"] != str(note.id)]
        message_ids = {mail.message_id for _, mail in copies}
        if not copies or wrong or len(message_ids) != 1:
            problems.append(f"task {task.id}: {len(copies)} mail(s) for notification {note.id}, "
                            f"Message-IDs {sorted(message_ids)}, to {[m.rcpt_tos for m in wrong]}")
            continue
        if len(copies) > 1:
            first = min(seen for seen, _ in copies)
            kills = [pid for at, pid in worker_kills if first - 0.5 <= at <= first + SENT_NOT_RECORDED_WINDOW]
            if kills and note.attempts >= len(copies):
                duplicates.append(f"task {task.id}: {len(copies)} copies (worker {kills[0]} killed "
                                  f"after the first)")
            else:
                problems.append(f"task {task.id}: {len(copies)} copies of one mail, notification attempts "
                                f"{note.attempts}, no worker killed within {SENT_NOT_RECORDED_WINDOW}s "
                                f"after the first copy")
    return MailReport(len(mails), duplicates, problems)


def assert_none(problems: dict[str, list[str]], seed: int) -> None:
    """Fail naming every broken invariant (its first cases) and the seed that repeats the run."""
    broken = {what: found for what, found in problems.items() if found}
    assert not broken, f"chaos run broke invariants (repeat with CHAOS_SEED={seed}):\n" + "\n".join(
        f"{what}: {len(found)}\n  " + "\n  ".join(found[:15]) for what, found in broken.items())


# -- the run ------------------------------------------------------------------------------------


@pytest.fixture
def chaos_app(make_app: Callable[..., Flask]) -> Flask:
    """The test's own app on PostgreSQL (creating it empties the tables): reads the outcome."""
    return make_app("postgres", ASYNC_TASK_PROCESSORS=["tests.chaos_processors"])


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    """A real SMTP server on a port below the ephemeral range (see proc_utils.free_port)."""
    server = SMTPServer(port=free_port()).start()
    yield server
    server.stop()


def start_api(tmp_path: Path, env: dict[str, str]) -> Gunicorn:
    """gunicorn with two workers serving the API (no consumer in them), once it answers."""
    server = Gunicorn.start(tmp_path, free_port(), {**env, "ASYNC_TASK_CONSUMER_ENABLED": "false"},
                            workers=2)

    def answers() -> bool:
        assert server.process.poll() is None, tail(server.log_text())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    wait_until(answers, timeout=60, interval=0.2, message="gunicorn answering /healthz")
    return server


@pytest.mark.timeout(int(CHAOS_SECONDS + SUBMIT_PATIENCE + DRAIN_TIMEOUT + NOTIFY_LEASE + 240))
def test_random_faults_lose_repeat_and_double_mail_nothing(
        smtp: SMTPServer, private_redis: RedisServer, chaos_app: Flask,
        pg_env: Callable[..., dict[str, str]], pool: ProcessPool, pg_url: str, tmp_path: Path) -> None:
    seed = chaos_seed()
    print(f"\nCHAOS seed {seed} (repeat with CHAOS_SEED={seed}), {CHAOS_SECONDS:g}s of faults")
    run_dir = tmp_path / "executions"
    run_dir.mkdir()
    env = pg_env(redis_url=private_redis.url, ASYNC_TASK_PROCESSORS="tests.chaos_processors",
                 MAIL_SERVER=smtp.host, MAIL_PORT=smtp.port, MAIL_USE_TLS="false",
                 MAIL_DEFAULT_SENDER="tasks@example.com", ASYNC_TASK_NOTIFY_TIMEOUT=NOTIFY_TIMEOUT,
                 ASYNC_TASK_NOTIFY_RETRY_BASE=0.5, ASYNC_TASK_SHUTDOWN_GRACE=2,
                 **{RUN_DIR_ENV: str(run_dir)})
    with chaos_app.app_context():
        _, token = create_token("chaos-client")
        db.session.remove()

    supervisor = Supervisor(pool, env, slots=WORKERS, concurrency=CONCURRENCY).start()
    api = start_api(tmp_path, env)
    mail_clock = MailClock(smtp).start()
    try:
        load = ApiLoad(f"http://127.0.0.1:{api.port}", token, seed).start()
        injector = FaultInjector(random.Random(f"{seed}-faults"), supervisor, private_redis, api, pg_url)
        started = time.monotonic()
        injector.run(CHAOS_SECONDS)
        load.stop()
        calm = time.monotonic()
        with chaos_app.app_context():
            db.engine.dispose()  # connections the faults terminated
        wait_for_drain(chaos_app, pool, run_dir, seed)
        drained = time.monotonic() - calm
        wait_for(None, lambda: pending_notifications(chaos_app) == 0, timeout=NOTIFY_LEASE + 60,
                 interval=0.5, message="every notification sent or given up")
        mailed = time.monotonic() - calm
        supervisor.stop()
        outcome = read_outcome(chaos_app, run_dir)
        mails = mail_clock.stop()
    finally:
        supervisor.stop()
        mail_clock.stop()
        api.stop()

    own_deaths = [f"worker {name} (pid {pid}) exited with {code}:\n{tail(pool.by_pid(pid).log_text(), 15)}"
                  for name, pid, code in supervisor.deaths if pid not in injector.killed_pids]
    mail_report = check_mails(outcome, mails, injector.worker_kills)
    problems = {
        "workers that died on their own": own_deaths,
        "acknowledged submits missing or altered": check_acknowledged(outcome, load),
        "valid submits refused": load.refused,
        "tasks that did not end as asked": check_ended(outcome),
        "tasks that succeeded (or committed) twice": check_succeeded_once(outcome),
        "attempts vs executions": check_attempts(outcome),
        "mails": mail_report.problems,
    }
    statuses = collections.Counter(task.status for task in outcome.tasks.values())
    events = collections.Counter(event.kind for task_events in outcome.events.values()
                                 for event in task_events if event.kind not in ("SUBMITTED", "CLAIMED"))
    print(f"\nFIGURE chaos: seed {seed}; {time.monotonic() - started:.0f}s ({CHAOS_SECONDS:g}s of faults, "
          f"drained {drained:.1f}s and mailed {mailed:.1f}s after); faults {dict(injector.injected)} "
          f"(skipped {dict(injector.skipped)}); API: {len(load.acks)} submits acknowledged, "
          f"{len(load.given_up)} given up, answers {dict(load.answers)}; tasks {len(outcome.tasks)} "
          f"{dict(statuses)}; executions {len(outcome.starts)}, attempts "
          f"{sum(task.attempts for task in outcome.tasks.values())}; events {dict(events)}; mails "
          f"{mail_report.mails}, duplicates {len(mail_report.duplicates)} {mail_report.duplicates}; "
          f"workers killed and restarted {len(injector.killed_pids)}; problems "
          f"{ {what: len(found) for what, found in problems.items() if found} }")
    assert_none(problems, seed)
