"""The drill's webhook receiver: a real HTTP server that sometimes answers 500 and sometimes hangs, and checks
every request it gets with the `standardwebhooks` package."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from tests.processes import free_port


@dataclass(frozen=True)
class Received:
    """One POST the receiver got: where, its `webhook-id`, what it was about, whether its signature verified."""

    path: str
    webhook_id: str
    event_type: str
    object_id: str
    timestamp: str  # the event's own time (the body's `timestamp`): with type and object, names the event
    verified: bool
    answered: int  # the status it was answered with (0: it hung past the sender's timeout)


class Receiver:
    """Receives webhooks at `url` + path; a path's secret must be set (`secrets`) before deliveries arrive."""

    def __init__(self, *, fail_rate: float, hang_rate: float, hang_s: float, seed: int = 7) -> None:
        self.fail_rate = fail_rate
        self.hang_rate = hang_rate
        self.hang_s = hang_s
        self.secrets: dict[str, str] = {}
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender gave up mid-body (its timeout): a failed attempt on its side too
                receiver.handle(self, body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
                del format, args

        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="drill-receiver", daemon=True)
        self._thread.start()

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        secret = self.secrets.get(handler.path)
        verified = False
        if secret is not None:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
            except Exception:  # any failure to verify is what the check reports
                verified = False
        try:
            payload = json.loads(body)
            event_type = str(payload.get("type"))
            object_id = str((payload.get("data") or {}).get("id"))
            timestamp = str(payload.get("timestamp"))
        except ValueError:
            event_type = object_id = timestamp = "?"
        with self._lock:
            roll = self._rng.random()
        hang = roll < self.hang_rate
        status = 500 if not hang and roll < self.hang_rate + self.fail_rate else 200
        record = Received(
            handler.path,
            headers.get("webhook-id", ""),
            event_type,
            object_id,
            timestamp,
            verified,
            0 if hang else status,
        )
        with self._lock:
            self.received.append(record)
        if hang:
            time.sleep(self.hang_s)  # past the sender's timeout: it counts as a failed attempt
        try:
            handler.send_response(status)
            handler.send_header("content-length", "0")
            handler.end_headers()
        except OSError:
            pass  # the sender gave up on us

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    """http.server's backlog is 5 connections: in a burst of deliveries the rest waited past the sender's 1 s
    connect timeout, failures of the drill's receiver rather than of the sender."""

    request_queue_size = 1024
