"""Real servers the notification tests talk to: an aiosmtpd SMTP server, a silent TCP server
that accepts connections and never answers, and an HTTP webhook receiver.

All listen on 127.0.0.1 on a port picked at start; each records what it received.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ReceivedMail:
    """One message as the SMTP server got it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    def part(self, content_type: str) -> str:
        """The text of the ``text/plain`` or ``text/html`` part."""
        body = self.message.get_body(preferencelist=(content_type.split("/")[1],))
        return "" if body is None else str(body.get_content())  # type: ignore[attr-defined]


class _RecordingHandler:
    def __init__(self, server: SMTPServer) -> None:
        self.server = server

    async def handle_RCPT(self, _server: Any, _session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: list[str]) -> str:
        """``bounce@...`` is refused for good (550), ``greylist@...`` for now (451)."""
        if address.startswith("bounce@"):
            return "550 5.1.1 No such user here"
        if address.startswith("greylist@"):
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802
        parsed = email.message_from_bytes(envelope.original_content or envelope.content,
                                          policy=email.policy.default)
        mail = ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), parsed)  # type: ignore[arg-type]
        with self.server.lock:
            self.server.mails.append(mail)
        return "250 Message accepted for delivery"


class SMTPServer:
    """A real SMTP server (aiosmtpd) on 127.0.0.1; ``stop()`` and ``start()`` keep its port."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.mails: list[ReceivedMail] = []
        self._controller: Controller | None = None

    def start(self) -> SMTPServer:
        self._controller = Controller(_RecordingHandler(self), hostname=self.host, port=self.port,
                                      ready_timeout=5.0)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def received(self) -> list[ReceivedMail]:
        with self.lock:
            return list(self.mails)

    def to(self, address: str) -> list[ReceivedMail]:
        """Mails whose envelope recipients include ``address``."""
        return [mail for mail in self.received() if address in mail.rcpt_tos]

    def config(self) -> dict[str, Any]:
        """The app settings that point Flask-Mail at this server."""
        return {"MAIL_SERVER": self.host, "MAIL_PORT": self.port, "MAIL_USE_TLS": False,
                "MAIL_USE_SSL": False, "MAIL_DEFAULT_SENDER": "tasks@example.com"}


class SilentServer:
    """Accepts TCP connections and never sends a byte (an SMTP server that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="silent-server", daemon=True)

    def start(self) -> SilentServer:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._connections.append(conn)  # held open, never answered

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._connections:
            conn.close()
        self.sock.close()


@dataclass
class WebhookCall:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP server (http.server in a thread) answering POSTs with the statuses queued in
    ``statuses`` (then ``default_status``), recording every call."""

    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    calls: list[WebhookCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.calls.append(WebhookCall(self.path, dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default_status
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"receiver says no")

            def log_message(self, *_args: Any) -> None:
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="webhook-receiver", daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self) -> list[WebhookCall]:
        with self.lock:
            return list(self.calls)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running_smtp_server() -> Iterator[SMTPServer]:
    """An SMTP server for the duration of a ``with`` block."""
    server = SMTPServer().start()
    try:
        yield server
    finally:
        server.stop()
