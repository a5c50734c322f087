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
  Message-ID;
* no worker exits of its own accord (one whose connection was cut while it registered, holding
  nothing, is restarted and reported).

The seed is printed first; ``CHAOS_SEED=<seed>`` repeats the same schedule of faults and the
same submits (the machine's timing still differs). ``CHAOS_SECONDS=600`` runs longer. The
summary is printed as ``FIGURE chaos: ...``: ``pytest -q -rP tests/faults/test_chaos.py``.
The clients and the faults are in tests/faults/chaos.py, the checks in
tests/faults/chaos_checks.py, the processor and its execution logs in tests/chaos_processors.py.
"""

from __future__ import annotations

import collections
import os
import random
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.chaos_processors import RUN_DIR_ENV
from tests.conftest import wait_until
from tests.faults.chaos import SUBMIT_PATIENCE, ApiLoad, FaultInjector, MailClock, chaos_seed
from tests.faults.chaos_checks import (
    MailReport,
    Outcome,
    assert_none,
    check_acknowledged,
    check_attempts,
    check_ended,
    check_mails,
    check_succeeded_once,
    check_worker_deaths,
    last_to_end,
    read_outcome,
    wait_for_drain,
    wait_for_mails,
)
from tests.faults.support import Gunicorn, Supervisor
from tests.proc_utils import ProcessPool, RedisServer, free_port, tail
from tests.smtp_server import SMTPServer
from webapp.accounts.tokens import create_token
from webapp.extensions import db

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS") or 60)
WORKERS = 4
CONCURRENCY = 3
# Per SMTP reply. Shorter timeouts make a loaded machine time out on replies the server did
# send, and a send that times out after the server took the mail is sent again (a duplicate no
# death explains); the default 10 s makes the lease 150 s, which the run would wait out.
NOTIFY_TIMEOUT = 5.0
NOTIFY_LEASE = 12 * NOTIFY_TIMEOUT + 30  # EngineSettings.notification_lease (webapp/config.py)
# Bounds of the settling after the faults: the backlog left by a longer run takes longer.
DRAIN_TIMEOUT = 120 + CHAOS_SECONDS / 2
MAIL_TIMEOUT = NOTIFY_LEASE + 60 + CHAOS_SECONDS / 4


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


def counts(counter: collections.Counter[str] | dict[str, int]) -> str:
    """``a 3, b 1`` (largest first), or ``none``."""
    items = sorted(counter.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {n}" for name, n in items) or "none"


def summary(seed: int, seconds: float, drained: float, mailed: float, injector: FaultInjector,
            load: ApiLoad, outcome: Outcome, mails: MailReport, casualties: list[str],
            problems: dict[str, list[str]]) -> str:
    """The run's figures, as the issue's closing note quotes them."""
    statuses = collections.Counter(task.status for task in outcome.tasks.values())
    events = collections.Counter(event.kind for task_events in outcome.events.values()
                                 for event in task_events if event.kind not in ("SUBMITTED", "CLAIMED"))
    finished = statuses["SUCCESS"] + statuses["FAILURE"]
    broken = {what: len(found) for what, found in problems.items() if found}
    return "\n".join((
        f"\nFIGURE chaos: seed {seed}, {CHAOS_SECONDS:g}s of faults, {seconds:.0f}s in all; every task "
        f"ended {drained:.1f}s and every mail went {mailed:.1f}s after the faults stopped",
        f"  faults injected: {counts(injector.injected)} (skipped, target busy: {counts(injector.skipped)})",
        f"  API: {len(load.acks)} submits acknowledged, {len(load.given_up)} given up; answers: "
        f"{counts(load.answers)}",
        f"  tasks: {len(outcome.tasks)} ({counts(statuses)}); executions {len(outcome.starts)}, attempts "
        f"{sum(task.attempts for task in outcome.tasks.values())}; events: {counts(events)}",
        f"  mails: {mails.mails} for {finished} finished tasks; duplicates {len(mails.duplicates)}"
        + "".join(f"\n    {line}" for line in mails.duplicates),
        f"  last to end: {last_to_end(outcome)}",
        f"  workers killed (and restarted): {len(injector.killed_pids)}; exited at start-up when their "
        f"connection was terminated (restarted): {len(casualties)} {casualties}",
        f"  invariants broken: {counts(broken)}",
    ))


@pytest.mark.timeout(int(CHAOS_SECONDS + SUBMIT_PATIENCE + DRAIN_TIMEOUT + MAIL_TIMEOUT + 180))
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
        wait_for_drain(chaos_app, pool, run_dir, seed, DRAIN_TIMEOUT)
        drained = time.monotonic() - calm
        wait_for_mails(chaos_app, pool, seed, MAIL_TIMEOUT)
        mailed = time.monotonic() - calm
        supervisor.stop()
        outcome = read_outcome(chaos_app, run_dir)
        mails = mail_clock.stop()
    finally:
        supervisor.stop()
        mail_clock.stop()
        api.stop()

    own_deaths, casualties = check_worker_deaths(supervisor.deaths, injector.killed_pids, pool)
    mail_report = check_mails(outcome, mails, injector.log)
    problems = {
        "workers that died on their own": own_deaths,
        "acknowledged submits missing or altered": check_acknowledged(outcome, load),
        "valid submits refused": load.refused,
        "tasks that did not end as asked": check_ended(outcome),
        "tasks that succeeded (or committed) twice": check_succeeded_once(outcome),
        "attempts vs executions": check_attempts(outcome),
        "mails": mail_report.problems,
    }
    print(summary(seed, time.monotonic() - started, drained, mailed, injector, load, outcome, mail_report,
                  casualties, problems))
    assert_none(problems, seed)
