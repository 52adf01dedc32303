"""One webhook delivery attempt against a real local HTTP(S) receiver: signing, destination checks, bounds."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import standardwebhooks

from switchyard.webhooks.destinations import NOT_ALLOWED
from switchyard.webhooks.sender import (
    BlockedDestination,
    DeliveryResult,
    WebhookSender,
    _url_for_address,
    check_destination,
    new_secret,
)

BIG_BODY_BYTES = 5 * 1024 * 1024


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that records every request it gets."""

    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    sni_names: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str, *, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        with receiver.lock:
            receiver.requests.append(Received(self.command, self.path, dict(self.headers.items()), body))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            getattr(self, "_route_" + url.path.strip("/").replace("-", "_"), self._route_ok)(query)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the sender hung up, as it should when it has read enough

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route_ok(self, query: dict[str, str]) -> None:
        self._reply(200, b"ok", {"content-type": "text/plain"})

    def _route_status(self, query: dict[str, str]) -> None:
        headers = {"retry-after": query["retry_after"]} if "retry_after" in query else {}
        self._reply(int(query["code"]), b"nope", headers)

    def _route_redirect(self, query: dict[str, str]) -> None:
        self._reply(302, b"", {"location": query["to"]})

    def _route_slow(self, query: dict[str, str]) -> None:
        self.server.receiver.release.wait(5)
        self._reply(200, b"late")

    def _route_big(self, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("content-length", str(BIG_BODY_BYTES))
        self.end_headers()
        chunk = b"x" * 65536
        for _ in range(BIG_BODY_BYTES // len(chunk)):
            self.wfile.write(chunk)

    def _route_stall(self, query: dict[str, str]) -> None:
        # Announces 5 MB, sends 64 KB and then nothing: a sender reading past its limit would sit here.
        self.send_response(200)
        self.send_header("content-length", str(BIG_BODY_BYTES))
        self.end_headers()
        self.wfile.write(b"y" * 65536)
        self.wfile.flush()
        self.server.receiver.release.wait(5)

    def _route_trickle(self, query: dict[str, str]) -> None:
        # Each byte comes well within the read timeout, so only a bound on the whole attempt stops this.
        self.wfile.write(b"HTTP/1.0 200 OK\r\nx-slow: ")
        self.wfile.flush()
        for _ in range(30):
            if self.server.receiver.release.wait(0.1):
                return
            self.wfile.write(b"z")
            self.wfile.flush()
        self.wfile.write(b"\r\ncontent-length: 2\r\n\r\nok")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops connections when many sender threads connect at once.
    request_queue_size = 128
    receiver: Receiver


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _Handler)
    receiver = Receiver(server)
    server.receiver = receiver
    if tls is not None:

        def remember_sni(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
            receiver.sni_names.append(name)

        tls.sni_callback = remember_sni
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve()


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA and a server certificate valid for the name "localhost" only (no IP addresses)."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    openssl("req", "-x509", *ec, *ca_ext, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    signing = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf"]
    openssl("x509", "-req", "-in", "server.csr", *signing, "-out", "server.pem")
    return Certs(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


@pytest.fixture
def tls_receiver(certs: Certs) -> Iterator[Receiver]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert, certs.key)
    yield from _serve(ctx)


def _sender(
    *,
    timeout_s: float = 1.0,
    max_response_bytes: int = 64 * 1024,
    allow_private: bool = True,
    ssl_context: ssl.SSLContext | None = None,
    resolve: Callable[[str, int], list[str]] | None = None,
) -> WebhookSender:
    return WebhookSender(
        timeout_s=timeout_s,
        max_response_bytes=max_response_bytes,
        allow_private=allow_private,
        ssl_context=ssl_context,
        resolve=resolve,
    )


@pytest.fixture
def sender() -> Iterator[WebhookSender]:
    with _sender() as s:
        yield s


def _deliver(sender: WebhookSender, url: str, body: bytes = b'{"type":"ping"}') -> DeliveryResult:
    return sender.send(url, msg_id="msg_test", timestamp=datetime.now(UTC), body=body, secret=new_secret())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- secrets -------------------------------------------------------------------------------------------------


def test_new_secret_is_standard_webhooks_format() -> None:
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_")
    assert 24 <= len(base64.b64decode(a.removeprefix("whsec_"), validate=True)) <= 32
    assert a != b
    standardwebhooks.Webhook(a)  # the SDK accepts it


# ---- signed delivery -----------------------------------------------------------------------------------------


def test_delivery_is_signed_and_body_unchanged(receiver: Receiver, sender: WebhookSender) -> None:
    secret = new_secret()
    body = json.dumps({"type": "task.succeeded", "data": {"text": "héllo ✓"}}, ensure_ascii=False).encode()
    # A non-UTC time: the header and the signature must both carry the same instant.
    when = datetime.now(timezone(timedelta(hours=5, minutes=30)))

    result = sender.send(receiver.url("/hook?x=1&y=2"), msg_id="msg_abc", timestamp=when, body=body, secret=secret)

    assert result.ok, result
    assert (result.status_code, result.error, result.gone, result.response_excerpt) == (200, None, False, "ok")
    assert result.latency_ms >= 0
    [got] = receiver.requests
    assert (got.method, got.path, got.body) == ("POST", "/hook?x=1&y=2", body)
    headers = {k.lower(): v for k, v in got.headers.items()}
    assert headers["webhook-id"] == "msg_abc"
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "Switchyard-Webhooks/1.0"
    assert headers["host"] == f"127.0.0.1:{receiver.port}"
    assert standardwebhooks.Webhook(secret).verify(got.body, headers) == json.loads(body)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(got.body, headers)


def test_host_name_is_sent_as_host_header(receiver: Receiver, sender: WebhookSender) -> None:
    # The sender connects to the address it checked, so the name must survive in the Host header.
    result = _deliver(sender, receiver.url("/ok", host="localhost"))

    assert result.ok, result
    [got] = receiver.requests
    assert {k.lower(): v for k, v in got.headers.items()}["host"] == f"localhost:{receiver.port}"


def test_concurrent_deliveries_from_many_threads(receiver: Receiver, sender: WebhookSender) -> None:
    secret = new_secret()
    results: list[DeliveryResult] = []

    def one(i: int) -> None:
        body = json.dumps({"n": i}).encode()
        url = receiver.url(f"/ok?n={i}")
        results.append(sender.send(url, msg_id=f"msg_{i}", timestamp=datetime.now(UTC), body=body, secret=secret))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)

    assert len(results) == 24
    assert all(r.ok for r in results)
    assert len(receiver.requests) == 24
    for got in receiver.requests:
        headers = {k.lower(): v for k, v in got.headers.items()}
        assert standardwebhooks.Webhook(secret).verify(got.body, headers) == {"n": int(got.path.split("=")[1])}


def test_body_that_is_not_utf8_is_a_caller_error(receiver: Receiver, sender: WebhookSender) -> None:
    with pytest.raises(ValueError, match="UTF-8"):
        _deliver(sender, receiver.url("/ok"), body=b"\xff\xfe")
    assert receiver.requests == []


# ---- destinations ------------------------------------------------------------------------------------------


def test_private_receiver_refused_without_allow_private(receiver: Receiver) -> None:
    with _sender(allow_private=False) as strict:
        result = _deliver(strict, receiver.url("/ok"))

    assert not result.ok
    assert result.status_code is None
    assert result.error is not None
    assert result.error == f"blocked destination: {NOT_ALLOWED}"
    time.sleep(0.1)  # a request, had one been sent, would have been recorded by now
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("url", "host", "why"),
    [
        ("http://localhost/", "localhost", "loopback"),
        ("http://10.0.0.1/", "10.0.0.1", "private"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "metadata service"),
        ("http://[::1]:8080/", "::1", "loopback"),
        ("http://100.64.0.1/", "100.64.0.1", "shared"),
        ("http://[::ffff:127.0.0.1]/", "127.0.0.1", "IPv4-mapped"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata.google.internal", "metadata service"),
        ("http://metadata./", "metadata", "metadata service"),
        ("https://192.168.1.1/", "192.168.1.1", "private"),
        ("http://172.16.5.4/", "172.16.5.4", "private"),
        ("http://0.0.0.0/", "0.0.0.0", "unspecified"),
        ("http://[::]/", "::", "unspecified"),
        ("http://[fe80::1]/", "fe80::1", "link-local"),
        ("http://[fd12:3456::1]/", "fd12:3456::1", "private"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254", "metadata service"),
        ("http://100.100.100.200/", "100.100.100.200", "metadata service"),
        ("http://224.0.0.1/", "224.0.0.1", "multicast"),
        ("http://[ff02::1]/", "ff02::1", "multicast"),
        ("http://240.0.0.1/", "240.0.0.1", "reserved"),
        ("http://[64:ff9b::a00:1]/", "10.0.0.1", "NAT64"),
        ("http://[2002:7f00:1::]/", "127.0.0.1", "6to4"),
        ("http://[::ffff:169.254.169.254]/", "169.254.169.254", "metadata service"),
        ("http://2130706433/", "127.0.0.1", "loopback"),  # a decimal spelling of 127.0.0.1
    ],
)
def test_check_destination_refuses_internal_addresses(url: str, host: str, why: str) -> None:
    with pytest.raises(BlockedDestination) as caught:
        check_destination(url, allow_private=False)
    assert host in caught.value.reason
    assert why in caught.value.reason


def test_metadata_refused_even_when_private_allowed() -> None:
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/", "http://[fd00:ec2::254]/"):
        with pytest.raises(BlockedDestination, match="metadata service"):
            check_destination(url, allow_private=True)


def test_check_destination_accepts_public_literals() -> None:
    assert check_destination("http://93.184.216.34/", allow_private=False) == [IPv4Address("93.184.216.34")]
    assert check_destination("https://[2606:2800:220:1:248:1893:25c8:1946]:8443/x", allow_private=False) == [
        IPv6Address("2606:2800:220:1:248:1893:25c8:1946")
    ]
    # The mapped form of a public address is as public as the address.
    assert check_destination("http://[::ffff:93.184.216.34]/", allow_private=False) == [
        IPv6Address("::ffff:93.184.216.34")
    ]


def test_check_destination_allow_private_returns_loopback() -> None:
    assert IPv4Address("127.0.0.1") in check_destination("http://localhost:9/", allow_private=True)


@pytest.mark.parametrize(
    "url", ["ftp://93.184.216.34/", "file:///etc/passwd", "gopher://93.184.216.34/", "http:///path-only", "nope"]
)
def test_non_http_urls_refused(url: str, sender: WebhookSender) -> None:
    with pytest.raises(BlockedDestination):
        check_destination(url, allow_private=True)
    result = _deliver(sender, url)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("blocked destination")


def test_name_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(BlockedDestination, match="does not resolve"):
        check_destination("https://no-such-host.invalid/hook", allow_private=True)


class Resolver:
    """DNS at the edge of the world: answers from a table and counts the questions."""

    def __init__(self, answers: dict[str, list[str]], delay_s: float = 0.0) -> None:
        self.answers = answers
        self.delay_s = delay_s
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        time.sleep(self.delay_s)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


def test_connects_to_the_checked_address_not_the_name_again(receiver: Receiver) -> None:
    # Only our resolver knows this name (.invalid never resolves in real DNS): the delivery can only arrive if the
    # connection goes to the address the check saw, with no second lookup a rebinding DNS server could answer.
    resolver = Resolver({"hooks.rebind.invalid": ["127.0.0.1"]})
    with _sender(resolve=resolver) as s:
        result = _deliver(s, receiver.url("/ok", host="hooks.rebind.invalid"))

    assert result.ok, result
    assert resolver.asked == ["hooks.rebind.invalid"]
    [got] = receiver.requests
    assert {k.lower(): v for k, v in got.headers.items()}["host"] == f"hooks.rebind.invalid:{receiver.port}"


def test_refused_when_any_address_is_private(receiver: Receiver) -> None:
    resolver = Resolver({"mixed.invalid": ["93.184.216.34", "10.1.2.3"]})
    with _sender(allow_private=False, resolve=resolver) as s:
        result = _deliver(s, receiver.url("/ok", host="mixed.invalid"))

    # The attempt's error is the tenant's to read: it says nothing of what the name resolves to.
    assert result.error == f"blocked destination: {NOT_ALLOWED}"
    assert "10.1.2.3" not in result.error


def test_next_address_tried_when_one_refuses(receiver: Receiver) -> None:
    # The receiver listens on 127.0.0.1 only, so 127.0.0.2 refuses the connection.
    resolver = Resolver({"two.invalid": ["127.0.0.2", "127.0.0.1"]})
    with _sender(resolve=resolver) as s:
        result = _deliver(s, receiver.url("/ok", host="two.invalid"))

    assert result.ok, result
    assert len(receiver.requests) == 1


def test_every_address_refusing_is_reported(receiver: Receiver) -> None:
    port = _closed_port()
    resolver = Resolver({"dead.invalid": ["127.0.0.2", "127.0.0.3"]})
    with _sender(resolve=resolver) as s:
        result = _deliver(s, f"http://dead.invalid:{port}/")

    assert not result.ok
    assert result.error is not None
    assert f"127.0.0.2:{port}" in result.error
    assert f"127.0.0.3:{port}" in result.error


def test_slow_dns_times_out(receiver: Receiver) -> None:
    resolver = Resolver({"slow.invalid": ["127.0.0.1"]}, delay_s=1.0)
    with _sender(timeout_s=0.2, resolve=resolver) as s:
        result = _deliver(s, receiver.url("/ok", host="slow.invalid"))

    assert result.error == "timeout: DNS resolution of slow.invalid took longer than 0.2 s"
    assert receiver.requests == []


def test_connects_to_address_with_brackets_port_path_and_query() -> None:
    target = httpx.URL("https://user:pw@hooks.example.com:8443/a/b?c=1&d=%20")
    v6 = _url_for_address(target, IPv6Address("2001:db8::1"))
    v4 = _url_for_address(target, IPv4Address("93.184.216.34"))
    assert str(v6) == "https://user:pw@[2001:db8::1]:8443/a/b?c=1&d=%20"
    assert str(v4) == "https://user:pw@93.184.216.34:8443/a/b?c=1&d=%20"


# ---- responses -----------------------------------------------------------------------------------------------


def test_redirect_is_reported_and_not_followed(receiver: Receiver, sender: WebhookSender) -> None:
    target = receiver.url("/target")

    result = _deliver(sender, receiver.url(f"/redirect?to={target}"))

    assert not result.ok
    assert result.status_code == 302
    assert result.error == f"redirect not followed (302 to {target})"
    time.sleep(0.1)
    assert receiver.paths() == [f"/redirect?to={target}"]


def test_gone(receiver: Receiver, sender: WebhookSender) -> None:
    result = _deliver(sender, receiver.url("/status?code=410"))

    assert (result.ok, result.status_code, result.gone, result.error) == (False, 410, True, "HTTP 410")
    assert result.response_excerpt == "nope"


def test_server_error_is_not_gone(receiver: Receiver, sender: WebhookSender) -> None:
    result = _deliver(sender, receiver.url("/status?code=500"))

    assert (result.ok, result.status_code, result.gone, result.error) == (False, 500, False, "HTTP 500")
    assert result.retry_after_s is None


def test_retry_after_seconds(receiver: Receiver, sender: WebhookSender) -> None:
    result = _deliver(sender, receiver.url("/status?code=429&retry_after=7"))

    assert (result.ok, result.status_code, result.retry_after_s) == (False, 429, 7)


def test_retry_after_http_date(receiver: Receiver, sender: WebhookSender) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    result = _deliver(sender, receiver.url(f"/status?code=503&retry_after={when}"))

    assert result.status_code == 503
    assert result.retry_after_s is not None
    assert 110 <= result.retry_after_s <= 120


@pytest.mark.parametrize(
    ("header", "expected"), [("999999", 86400.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), ("soon", None)]
)
def test_retry_after_capped_past_and_unreadable(
    receiver: Receiver, sender: WebhookSender, header: str, expected: float | None
) -> None:
    result = _deliver(sender, receiver.url(f"/status?code=429&retry_after={header}"))

    assert result.retry_after_s == expected


# ---- bounds and failures -------------------------------------------------------------------------------------


def test_slow_receiver_times_out(receiver: Receiver) -> None:
    with _sender(timeout_s=0.2) as quick:
        result = _deliver(quick, receiver.url("/slow"))

    assert not result.ok
    assert result.status_code is None
    assert result.error == "timeout: read"


def test_trickling_receiver_stopped_by_attempt_budget(receiver: Receiver) -> None:
    # 30 bytes, 0.1 s apart: each read succeeds within 0.3 s, the whole response would take 3 s.
    with _sender(timeout_s=0.3) as quick:
        result = _deliver(quick, receiver.url("/trickle"))

    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("timeout: the attempt took longer than its budget of 0.6 s")


def test_large_response_cut_at_max_response_bytes(receiver: Receiver) -> None:
    with _sender(max_response_bytes=10_000) as s:
        result = _deliver(s, receiver.url("/big"))

    assert result.ok, result
    assert result.response_bytes == 10_000
    assert result.response_excerpt == "x" * 1000


def test_rest_of_response_is_not_read(receiver: Receiver) -> None:
    # The receiver sends 64 KB of an announced 5 MB and then stalls: reading past the limit would wait out the
    # 1 s read timeout, stopping at it returns at once.
    with _sender(timeout_s=1.0, max_response_bytes=10_000) as s:
        result = _deliver(s, receiver.url("/stall"))

    assert result.ok, result
    assert result.response_bytes == 10_000
    assert len(result.response_excerpt) == 1000
    assert result.latency_ms < 1000


def test_closed_port_is_a_connection_error(sender: WebhookSender) -> None:
    result = _deliver(sender, f"http://127.0.0.1:{_closed_port()}/hook")

    assert not result.ok
    assert result.status_code is None
    assert result.error is not None
    assert result.error.startswith("connection error")
    assert "refused" in result.error.lower()


# ---- TLS -----------------------------------------------------------------------------------------------------


def test_https_verifies_certificate_against_host_name(tls_receiver: Receiver, certs: Certs) -> None:
    # The certificate names "localhost" only; the connection goes to 127.0.0.1. Success means the name, not the
    # address, was sent as SNI and used to verify the certificate.
    with _sender(ssl_context=ssl.create_default_context(cafile=str(certs.ca))) as s:
        result = _deliver(s, tls_receiver.url("/ok", host="localhost", scheme="https"))

    assert result.ok, result
    assert tls_receiver.sni_names == ["localhost"]
    [got] = tls_receiver.requests
    assert {k.lower(): v for k, v in got.headers.items()}["host"] == f"localhost:{tls_receiver.port}"


def test_https_certificate_for_another_name_fails(tls_receiver: Receiver, certs: Certs) -> None:
    with _sender(ssl_context=ssl.create_default_context(cafile=str(certs.ca))) as s:
        result = _deliver(s, tls_receiver.url("/ok", host="127.0.0.1", scheme="https"))

    assert not result.ok
    assert result.error is not None
    assert result.error.startswith("TLS error")
    assert "mismatch" in result.error
    assert tls_receiver.requests == []


def test_https_untrusted_certificate_fails(tls_receiver: Receiver) -> None:
    # The default trust store does not know the test CA.
    with _sender() as s:
        result = _deliver(s, tls_receiver.url("/ok", host="localhost", scheme="https"))

    assert not result.ok
    assert result.error is not None
    assert "certificate verify failed" in result.error
    assert tls_receiver.requests == []
