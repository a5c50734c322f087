"""Real gunicorn (``gunicorn wsgi:app`` with the committed gunicorn.conf.py) on PostgreSQL.

* the consumer embedded in each of 2 gunicorn workers (with and without ``preload_app``):
  200 tasks each run exactly once and each creator gets exactly one mail (aiosmtpd);
* the recommended layout: web consumer off, 2 ``flask tasks worker`` processes, tasks
  submitted through the JSON API served by gunicorn, JSON logs;
* SIGTERM to gunicorn mid-run: running tasks finish, nothing is left PROCESSING;
* /metrics answers the same from every worker process;
* scripts/deploy_check.sh: docs/deploy.md followed on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import ROOT, RUN_ID, wait_until
from tests.deploy_processors import RUN_LOG_ENV, TASK_TYPE, read_runs
from tests.smtp_server import SMTPServer, free_port
from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AsyncTask, Notification, Worker

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BIN = ROOT / ".venv" / "bin"
TASKS = 200
SCRUBBED_PREFIXES = ("ASYNC_TASK_", "FLASK_", "GUNICORN_", "MAIL_")
SCRUBBED_NAMES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "LOG_LEVEL", "WEB_CONCURRENCY", "PORT", "HOST")


def process_environment(pg_url: str, tmp_path: Path, smtp: SMTPServer | None, **settings: Any) -> dict[str, str]:
    """What gunicorn and the workers get: this run's database, short intervals, nothing inherited."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(SCRUBBED_PREFIXES) and name not in SCRUBBED_NAMES}
    env.update({
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "DOTENV_PATH": str(tmp_path / "no-such.env"),
        "FLASK_APP": "webapp",
        "SECRET_KEY": "gunicorn-test-secret-5f0e9d8c7b6a5f4e3d2c",
        "DATABASE_URL": pg_url,
        "ASYNC_TASK_PROCESSORS": "tests.deploy_processors",
        "ASYNC_TASK_POLL_INTERVAL": "0.2",
        "ASYNC_TASK_HEARTBEAT_INTERVAL": "0.5",
        "ASYNC_TASK_SHUTDOWN_GRACE": "5",
        "ASYNC_TASK_NOTIFY_RETRY_BASE": "0.5",
        "ASYNC_TASK_METRICS_PUBLIC": "true",  # scraped without a token, fresh on every request
        "ASYNC_TASK_METRICS_CACHE_SECONDS": "0.001",
        "ASYNC_TASK_REDIS_LOCK_PREFIX": f"test-{RUN_ID}-gunicorn:",
        RUN_LOG_ENV: str(tmp_path / "runs.log"),
    })
    if smtp is not None:
        env.update({"MAIL_SERVER": smtp.host, "MAIL_PORT": str(smtp.port), "MAIL_USE_TLS": "false",
                    "MAIL_DEFAULT_SENDER": "tasks@example.com"})
    env.update({name: str(value) for name, value in settings.items()})
    return env


@dataclass
class Service:
    """A subprocess (gunicorn or a worker) whose output goes to a file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        return self.log_path.read_text(errors="replace")

    def children(self) -> set[int]:
        """Pids of the direct children (gunicorn's workers)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return set()
        return {int(pid) for pid in text.split()}

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit within {timeout}s after SIGTERM") from None


@dataclass
class Services:
    """Starts the processes of one test and makes sure none outlives it."""

    tmp_path: Path
    env: dict[str, str]
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, argv: list[str], **extra_env: Any) -> Service:
        log_path = self.tmp_path / f"{name}.log"
        log_file = log_path.open("ab")
        env = {**self.env, **{k: str(v) for k, v in extra_env.items()}}
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        service = Service(name, process, log_path, log_file)
        self.started.append(service)
        return service

    def gunicorn(self, port: int, workers: int = 2, **extra_env: Any) -> Service:
        """``gunicorn wsgi:app`` from the repository root (so gunicorn.conf.py applies)."""
        return self.start("gunicorn", [str(BIN / "gunicorn"), "wsgi:app"], WEB_CONCURRENCY=workers,
                          GUNICORN_BIND=f"127.0.0.1:{port}", **extra_env)

    def worker(self, name: str, concurrency: int = 3) -> Service:
        return self.start(name, [str(BIN / "flask"), "tasks", "worker", "--concurrency", str(concurrency)])

    def shutdown(self) -> None:
        for service in reversed(self.started):
            if service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
        for service in self.started:
            try:
                service.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait(timeout=10)
            service.log_file.close()

    def dump(self) -> None:
        for service in self.started:
            print(f"----- {service.name} (pid {service.pid}) -----\n{service.output()[-6000:]}")


@pytest.fixture
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    failed_before = request.session.testsfailed
    group = Services(tmp_path, {})
    yield group
    group.shutdown()
    if request.session.testsfailed > failed_before:
        group.dump()


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_app(make_app):
    """The test process's own app on this run's PostgreSQL database (emptied first)."""
    return make_app("postgres", ASYNC_TASK_PROCESSORS=["tests.deploy_processors"])


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> tuple[int, str]:
    """One request on a fresh connection (so successive calls can reach different workers)."""
    request = urllib.request.Request(url, headers={**(headers or {}), "Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def http_post_json(url: str, body: Any, token: str) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}", "Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = http_get(f"{base}/metrics")
    assert status == 200, text
    return metric_samples(text)


def wait_ready(base: str, server: Service, timeout: float = 30) -> None:
    def ready() -> bool:
        if server.process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {server.process.returncode}:\n{server.output()[-4000:]}")
        return http_get(f"{base}/readyz")[0] == 200
    wait_until(ready, timeout=timeout, interval=0.2, message="gunicorn /readyz 200")


def running_workers(app) -> list[Worker]:
    with app.app_context():
        rows = AsyncTaskService().workers()
        db.session.remove()
        return rows


def wait_workers(app, count: int) -> list[Worker]:
    return wait_until(lambda: (rows := running_workers(app)) and len(rows) == count and rows,
                      timeout=30, message=f"{count} running consumers")


def submit(app, count: int, **payload: Any) -> list[int]:
    items = [{"task_type": TASK_TYPE, "payload": dict(payload), "created_by": f"user{i}@example.com"}
             for i in range(count)]
    with app.app_context():
        tasks = AsyncTaskService().submit_many(items)
        ids = [task.id for task in tasks]
        db.session.remove()
    return ids


def statuses(app) -> Counter[str]:
    with app.app_context():
        rows = db.session.execute(select(AsyncTask.status, func.count()).group_by(AsyncTask.status)).all()
        db.session.remove()
    return Counter({status: count for status, count in rows})


def notification_statuses(app) -> Counter[str]:
    with app.app_context():
        rows = db.session.execute(select(Notification.status, func.count()).group_by(Notification.status)).all()
        db.session.remove()
    return Counter({status: count for status, count in rows})


def assert_each_ran_once(runs: list[tuple[int, int, int]], ids: list[int], allowed_pids: set[int]) -> None:
    per_task = Counter(task_id for task_id, _, _ in runs)
    assert sorted(per_task) == sorted(ids), "some tasks never ran (or unknown ones did)"
    twice = {task_id: n for task_id, n in per_task.items() if n != 1}
    assert not twice, f"tasks run more than once: {twice}"
    stray = {pid for _, _, pid in runs} - allowed_pids
    assert not stray, f"runs in processes that should run no task: {stray} (allowed {allowed_pids})"


def assert_one_mail_each(smtp: SMTPServer, count: int) -> None:
    received = Counter(rcpt for mail in smtp.received() for rcpt in mail.rcpt_tos)
    expected = {f"user{i}@example.com" for i in range(count)}
    assert set(received) == expected
    repeated = {rcpt: n for rcpt, n in received.items() if n != 1}
    assert not repeated, f"creators mailed more than once: {repeated}"


# -- the consumer embedded in every gunicorn worker -----------------------------------------


@pytest.mark.parametrize("preload", [False, True], ids=["per-worker-import", "preload_app"])
def test_embedded_consumers_run_each_task_once_and_mail_once(pg_url, pg_app, services, smtp, tmp_path, preload):
    services.env = process_environment(pg_url, tmp_path, smtp, ASYNC_TASK_CONSUMER_ENABLED="true",
                                       GUNICORN_PRELOAD=str(preload).lower())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = services.gunicorn(port, workers=2)
    wait_ready(base, server)
    consumers = wait_workers(pg_app, 2)
    gunicorn_workers = server.children()
    assert len(gunicorn_workers) == 2
    # One consumer in each worker process, none in the master (preload imports wsgi.py there).
    assert {row.pid for row in consumers} == gunicorn_workers
    assert server.pid not in {row.pid for row in consumers}

    ids = submit(pg_app, TASKS)
    wait_until(lambda: statuses(pg_app)["SUCCESS"] == TASKS, timeout=60, interval=0.2, message="all SUCCESS")
    wait_until(lambda: notification_statuses(pg_app)["SENT"] == TASKS, timeout=60, interval=0.2,
               message="every notification SENT")
    wait_until(lambda: len(smtp.received()) >= TASKS, timeout=10, message="mails at the SMTP server")
    time.sleep(0.5)  # a duplicate, were there one, would arrive now

    runs = read_runs(tmp_path / "runs.log")
    assert_each_ran_once(runs, ids, gunicorn_workers)
    assert len({pid for _, _, pid in runs}) == 2, "both gunicorn workers should have run tasks"
    assert_one_mail_each(smtp, TASKS)

    # Every worker process reports the cluster's numbers, read from the database.
    seen = [scrape(base) for _ in range(6)]
    for samples in seen:
        assert samples[("taskdeck_tasks", (("status", "SUCCESS"), ("task_type", TASK_TYPE)))] == TASKS
        assert samples[("taskdeck_notifications", (("status", "SENT"), ("type", "EMAIL")))] == TASKS
        assert samples[("taskdeck_workers_online", ())] == 2
        assert samples[("taskdeck_tasks_processed_total", (("task_type", TASK_TYPE),))] == TASKS

    assert server.terminate() == 0
    with pg_app.app_context():
        stopped = db.session.scalars(select(Worker.status).where(Worker.pid.in_(gunicorn_workers))).all()
    assert sorted(stopped) == ["STOPPED", "STOPPED"], "worker_exit should stop each consumer cleanly"


# -- the recommended layout: dedicated workers ----------------------------------------------


def test_dedicated_workers_with_web_consumer_off(pg_url, pg_app, services, smtp, tmp_path):
    services.env = process_environment(pg_url, tmp_path, smtp, ASYNC_TASK_CONSUMER_ENABLED="false",
                                       ASYNC_TASK_LOG_FORMAT="json")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = services.gunicorn(port, workers=2)
    workers = [services.worker("worker-1"), services.worker("worker-2")]
    wait_ready(base, server)
    consumers = wait_workers(pg_app, 2)
    assert {row.pid for row in consumers} == {w.pid for w in workers}, "gunicorn must run no consumer"

    with pg_app.app_context():
        _, secret = create_token("deploy-test")
        db.session.remove()
    items = [{"task_type": TASK_TYPE, "payload": {}, "created_by": f"user{i}@example.com"} for i in range(TASKS)]
    status, body = http_post_json(f"{base}/api/tasks/batch", {"tasks": items}, secret)
    assert status == 202, body
    ids = [item["id"] for item in body["items"]]

    wait_until(lambda: statuses(pg_app)["SUCCESS"] == TASKS, timeout=60, interval=0.2, message="all SUCCESS")
    wait_until(lambda: notification_statuses(pg_app)["SENT"] == TASKS, timeout=60, interval=0.2,
               message="every notification SENT")
    time.sleep(0.5)
    runs = read_runs(tmp_path / "runs.log")
    assert_each_ran_once(runs, ids, {w.pid for w in workers})
    assert_one_mail_each(smtp, TASKS)

    for worker in workers:
        assert worker.terminate() == 0
    assert server.terminate() == 0
    # ASYNC_TASK_LOG_FORMAT=json: every line of gunicorn (master, workers, access log) is JSON,
    # and each line logged while a task ran names it.
    for line in server.output().splitlines():
        json.loads(line)
    task_lines = []
    for worker in workers:
        for line in worker.output().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record["message"].startswith("recorded run of task"):
                    task_lines.append(record)
    assert len(task_lines) == TASKS
    for record in task_lines:
        assert record["message"] == f"recorded run of task {record['task_id']}"
        assert record["task_type"] == TASK_TYPE
        assert record["attempt"] == 1


# -- graceful stop ------------------------------------------------------------------------


def test_sigterm_lets_running_tasks_finish_and_leaves_nothing_claimed(pg_url, pg_app, services, tmp_path):
    services.env = process_environment(pg_url, tmp_path, None, ASYNC_TASK_CONSUMER_ENABLED="true",
                                       ASYNC_TASK_CONCURRENCY="2")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = services.gunicorn(port, workers=2)
    wait_ready(base, server)
    wait_workers(pg_app, 2)
    ids = submit(pg_app, 12, seconds=1.0)
    wait_until(lambda: statuses(pg_app)["PROCESSING"] >= 2, timeout=20, message="tasks running")

    began = time.monotonic()
    assert server.terminate(timeout=40) == 0
    assert time.monotonic() - began < 20
    after = statuses(pg_app)
    assert after["PROCESSING"] == 0, f"tasks left claimed by a stopped worker: {after}"
    assert after["SUCCESS"] >= 2  # those running at the SIGTERM finished
    assert after["SUCCESS"] + after["PENDING"] == len(ids)

    # A worker started afterwards takes the released rest; nothing ran twice.
    services.worker("after-upgrade")
    wait_until(lambda: statuses(pg_app)["SUCCESS"] == len(ids), timeout=40, message="the rest done")
    runs = read_runs(tmp_path / "runs.log")
    assert sorted(Counter(task_id for task_id, _, _ in runs).values()) == [1] * len(ids)


# -- docs/deploy.md, followed literally -----------------------------------------------------


def test_deploy_guide_script_brings_up_a_working_system(tmp_path):
    """scripts/deploy_check.sh: one web, two workers, PostgreSQL and Redis, as docs/deploy.md says."""
    script = ROOT / "scripts" / "deploy_check.sh"
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(SCRUBBED_PREFIXES) and name not in SCRUBBED_NAMES}
    env["DEPLOY_CHECK_WORKDIR"] = str(tmp_path)
    result = subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=150)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    assert "deploy check passed" in result.stdout
