"""Issue 10 item 4: slow clients freeze a bare gunicorn, not gunicorn behind the shipped nginx config.

150 sockets each send a request line and then one header line every 5 s, never finishing their
headers. Straight at gunicorn (2 workers x 4 threads) they hold every thread and ``/healthz``
probes time out; through Debian's nginx running ``docs/nginx/taskdeck.conf`` every probe keeps
answering. nginx runs with its own prefix, temp folders and log files under ``tmp_path`` and
listens on a free 127.0.0.1 port; the attack comes from 127.0.0.2, the probes from 127.0.0.1
(a load balancer's address is not the attacker's).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_until
from tests.proc_utils import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SHIPPED_CONFIG = ROOT / "docs" / "nginx" / "taskdeck.conf"
ATTACKERS = 150
ATTACKER_ADDRESS = "127.0.0.2"
HEADER_INTERVAL = 5.0  # as in the report: one header line every 5 s
PROBE_TIMEOUT = 2.0

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (make test installs it)")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _status(port: int, path: str = "/healthz", timeout: float = PROBE_TIMEOUT) -> int:
    """One GET on a fresh connection from 127.0.0.1; 0 when it does not answer in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=("127.0.0.1", 0)) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return 0
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@pytest.fixture
def gunicorn(sqlite_template: Path, tmp_path: Path) -> Iterator[Server]:
    """``gunicorn wsgi:app`` with the shipped gunicorn.conf.py, 2 workers x 4 threads, loopback."""
    database = tmp_path / "front.sqlite3"
    database.write_bytes(sqlite_template.read_bytes())
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("ASYNC_TASK_", "FLASK_", "GUNICORN_")) and name != "SECRET_KEY"}
    env.update({"PYTHONPATH": str(ROOT), "DOTENV_PATH": str(tmp_path / "none.env"),
                "DATABASE_URL": f"sqlite:///{database}", "SECRET_KEY": "nginx-front-test-5f0e9d8c7b6a5f4e3d2c",
                "ASYNC_TASK_CONSUMER_ENABLED": "false", "ASYNC_TASK_TRUSTED_PROXIES": "1",
                "PORT": str(port), "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"})
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(ROOT / ".venv" / "bin" / "gunicorn"), "wsgi:app"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, log)
    try:
        wait_until(lambda: process.poll() is not None or _status(port) == 200, timeout=60,
                   message="gunicorn answering")
        assert process.poll() is None, log.read_text()[-3000:]
        yield server
    finally:
        server.stop()


def nginx_config(tmp_path: Path, listen_port: int, upstream_port: int) -> Path:
    """The shipped server block with this test's ports and static folder, in a minimal nginx.conf."""
    site = SHIPPED_CONFIG.read_text()
    assert "server 127.0.0.1:8000;" in site and "listen 80;" in site and "/opt/taskdeck/app/static/" in site
    site = (site.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
                .replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
                .replace("/opt/taskdeck/app/static/", f"{ROOT / 'static'}/"))
    (tmp_path / "nginx" / "temp").mkdir(parents=True)
    (tmp_path / "nginx" / "site.conf").write_text(site)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read tmp_path (mode 0700)
    temp = tmp_path / "nginx" / "temp"
    main = tmp_path / "nginx" / "nginx.conf"
    main.write_text(f"""{user}worker_processes 1;
pid {tmp_path / 'nginx' / 'nginx.pid'};
error_log {tmp_path / 'nginx' / 'error.log'} warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    access_log {tmp_path / 'nginx' / 'access.log'};
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {tmp_path / 'nginx' / 'site.conf'};
}}
""")
    return main


@pytest.fixture
def nginx(gunicorn: Server, tmp_path: Path) -> Iterator[Server]:
    port = free_port()
    config = nginx_config(tmp_path, port, gunicorn.port)
    prefix = tmp_path / "nginx"
    checked = subprocess.run([NGINX, "-t", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    log = prefix / "stdout.log"
    with log.open("wb") as out:
        process = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config),
                                    "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT)
    server = Server(process, port, prefix / "error.log")
    try:
        wait_until(lambda: process.poll() is not None or _status(port) == 200, timeout=30,
                   message="nginx answering")
        assert process.poll() is None, log.read_text() + server.log.read_text()
        yield server
    finally:
        server.stop()


class SlowClients:
    """``count`` sockets from ATTACKER_ADDRESS that never finish their headers (slowloris)."""

    def __init__(self, port: int, count: int = ATTACKERS) -> None:
        self.port = port
        self.count = count
        self.sockets: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._drip, name="slow-clients", daemon=True)

    def __enter__(self) -> SlowClients:
        for _ in range(self.count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5,
                                            source_address=(ATTACKER_ADDRESS, 0))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
            self.sockets.append(sock)
        self.thread.start()
        return self

    def _drip(self) -> None:
        """A header line on every socket every HEADER_INTERVAL seconds; reconnect closed ones."""
        beat = 0
        while not self.stopped.wait(HEADER_INTERVAL):
            beat += 1
            for index, sock in enumerate(self.sockets):
                try:
                    sock.sendall(f"X-Slow-{beat}: {beat}\r\n".encode())
                except OSError:  # the server hung up on it (nginx's header timeout): come back
                    sock.close()
                    try:
                        fresh = socket.create_connection(("127.0.0.1", self.port), timeout=2,
                                                         source_address=(ATTACKER_ADDRESS, 0))
                        fresh.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
                        self.sockets[index] = fresh
                    except OSError:
                        pass

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


def probe_for(port: int, seconds: float) -> list[tuple[float, int]]:
    """``/healthz`` every 0.5 s for ``seconds``: (how long it took, status; 0 = no answer)."""
    results = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        began = time.monotonic()
        status = _status(port)
        results.append((time.monotonic() - began, status))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - began)))  # a probe's period, not a wait for state
    return results


def test_slow_clients_starve_a_bare_gunicorn(gunicorn: Server) -> None:
    """The control: the attack is real here (the reason gunicorn binds 127.0.0.1 behind nginx)."""
    with SlowClients(gunicorn.port):
        results = probe_for(gunicorn.port, 10)
    # At least two probes in a row went unanswered. (Locally every probe does; on a loaded CI
    # machine gunicorn 27 was once seen freeing its threads after two, which still shows the
    # attack is real. The test below is the one that must hold every time.)
    statuses = [status for _, status in results]
    assert any(statuses[i] == statuses[i + 1] == 0 for i in range(len(statuses) - 1)), results


def test_behind_nginx_healthz_keeps_answering_through_the_attack(gunicorn: Server, nginx: Server) -> None:
    with SlowClients(nginx.port):
        results = probe_for(nginx.port, 15)  # past nginx's 10 s header timeout: the attack reconnects
    failed = [(took, status) for took, status in results if status != 200]
    assert not failed, f"{len(failed)} of {len(results)} probes failed: {failed}"
    assert len(results) >= 20


def test_nginx_serves_static_files_and_refuses_big_bodies_itself(gunicorn: Server, nginx: Server) -> None:
    assert _status(nginx.port, "/static/console.css") == 200
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=5) as sock:
        sock.sendall(b"POST /api/tasks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2000000\r\nConnection: close\r\n\r\n")
        assert b" 413 " in sock.recv(64)
    # gunicorn never saw the static file or the refused body: nginx answered both itself.
    assert "console.css" not in gunicorn.log.read_text()
    assert "POST /api/tasks" not in gunicorn.log.read_text()


def test_gunicorn_binds_the_loopback_interface_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing but nginx (or another local proxy) can reach gunicorn unless GUNICORN_BIND says so."""
    import runpy

    for name in ("GUNICORN_BIND", "HOST", "PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASKDECK_GUNICORN_MASTER_PID", "0")  # the file marks "its" master: undone after
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == "127.0.0.1:8000"
    monkeypatch.setenv("GUNICORN_BIND", "0.0.0.0:9000")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["bind"] == "0.0.0.0:9000"
