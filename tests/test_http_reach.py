"""The `http` action's reach (contract section 8): destinations that are not public are refused
before any connection, unless WORKFLOW_HTTP_ALLOW admits them; the connection goes to the
address that was checked, with TLS still verified for the host name; a large answer is cut off
while it streams in.

No test here sends anything to an address outside this machine: a refused destination is
refused before a connection is tried, and the tests of refusals put a connector behind the
check that fails the test if it is ever asked to connect."""

from __future__ import annotations

import resource
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpcore
import httpx
import pytest
import trustme

from exec_service.actions import builtin
from exec_service.actions.builtin import ActionError, PermanentActionError, http
from exec_service.actions.http_reach import checked_client
from tests.conftest import EXECUTION_BACKENDS
from tests.executions import by_name, run
from tests.recorder import Recorder, recorder

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Recorder]:
    with recorder() as running:
        yield running


class Connector(httpcore.AsyncNetworkBackend):
    """The connector behind the check: records where it was asked to connect, and connects
    there (or, with `refuse`, fails the test instead)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.asked: list[str] = []
        self.real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.asked.append(host)
        if self.refuse:
            raise AssertionError(f"a connection to {host}:{port} was attempted")
        return await self.real.connect_tcp(host, port, timeout, local_address, socket_options)

    async def sleep(self, seconds: float) -> None:
        await self.real.sleep(seconds)


def use_client(
    monkeypatch: pytest.MonkeyPatch,
    connector: Connector | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """The action's client for this test: the real one, with `connector` behind the check."""
    client = checked_client(verify, connector)
    monkeypatch.setattr(builtin, "_http_client", lambda: client)
    return client


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:{port}/", "127.0.0.1"),
        ("http://localhost:{port}/", "127.0.0.1"),  # a name that resolves to loopback
        ("http://[::1]:{port}/", "::1"),
        ("http://2130706433:{port}/", "127.0.0.1"),  # loopback spelled as one number
        ("http://0x7f.1:{port}/", "127.0.0.1"),
        ("http://[::ffff:127.0.0.1]:{port}/", "::ffff:7f00:1"),  # IPv4-mapped
        ("http://0.0.0.0:{port}/", "0.0.0.0"),
        ("https://[::]/", "::"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://172.16.0.1/", "172.16.0.1"),
        ("http://192.168.1.1/", "192.168.1.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe"),
        ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe"),  # NAT64 of the metadata server
        ("http://[2002:a00:1::]/", "2002:a00:1::"),  # 6to4 of 10.0.0.1
        ("http://100.64.0.1/", "100.64.0.1"),
        ("http://224.0.0.1/", "224.0.0.1"),
        ("http://[ff0e::1]/", "ff0e::1"),  # global-scope multicast
        ("http://[fe80::1]/", "fe80::1"),
        ("http://[fc00::1]/", "fc00::1"),
        ("http://[fec0::1]/", "fec0::1"),  # site-local, deprecated
    ],
)
async def test_destinations_that_are_not_public_are_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, endpoint: Recorder, url: str, address: str
) -> None:
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", "")
    connector = Connector(refuse=True)
    use_client(monkeypatch, connector)
    port = endpoint.base.rsplit(":", 1)[1]
    with pytest.raises(PermanentActionError) as refused:
        await http({"url": url.format(port=port)})
    message = str(refused.value)
    assert message.startswith("http: destination refused: ")
    assert address in message
    assert "WORKFLOW_HTTP_ALLOW" in message
    assert connector.asked == []


@pytest.mark.parametrize("allow", ["127.0.0.1", "127.0.0.0/8", "localhost", "*", "10.0.0.0/8,*"])
async def test_the_allow_list_admits_hosts_addresses_and_networks(
    monkeypatch: pytest.MonkeyPatch, endpoint: Recorder, allow: str
) -> None:
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", allow)
    label = f"allowed-{len(allow)}-{allow.count('.')}"
    host = "localhost" if allow == "localhost" else "127.0.0.1"
    url = endpoint.url(label).replace("127.0.0.1", host)
    before = endpoint.count(label)
    output = await http({"url": url})
    assert output["body"]["label"] == label
    assert endpoint.count(label) == before + 1


async def test_the_allow_list_is_exact(monkeypatch: pytest.MonkeyPatch, endpoint: Recorder) -> None:
    # Another name, another network: still refused.
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", "api.internal, 10.0.0.0/8")
    connector = Connector(refuse=True)
    use_client(monkeypatch, connector)
    with pytest.raises(PermanentActionError, match=r"^http: destination refused: "):
        await http({"url": endpoint.url("exact")})
    assert connector.asked == []


async def test_the_connection_goes_to_the_checked_address_and_keeps_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", "127.0.0.0/8")
    connector = Connector()
    use_client(monkeypatch, connector)
    seen: list[str | None] = []

    class EchoHost(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers["host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return None

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), EchoHost)) as port:
        output = await http({"url": f"http://localhost:{port}/"})
    assert output["status_code"] == 204
    # The name was resolved and checked once; the connection went to that address, not to the
    # name (which could resolve elsewhere a second time); the server saw the name.
    assert connector.asked == ["127.0.0.1"]
    assert seen == [f"localhost:{port}"]


class IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


async def test_an_ipv6_destination_is_reached_when_admitted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", "::1")

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"over": "ipv6"}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    try:
        server = IPv6Server(("::1", 0), Hello)
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    with serving(server) as port:
        output = await http({"url": f"http://[::1]:{port}/"})
    assert output["body"] == {"over": "ipv6"}


async def test_connection_errors_do_not_tell_closed_ports_from_open_ones() -> None:
    with pytest.raises(ActionError) as closed:
        await http({"url": "http://127.0.0.1:1/", "timeout": 2})
    assert str(closed.value) == "http: GET http://127.0.0.1:1/ failed: could not connect"
    assert not isinstance(closed.value, PermanentActionError)  # it may be up next time


@pytest.mark.parametrize("seconds", [0, -1, "5", 1e9, float("inf"), float("nan"), True])
async def test_the_timeout_is_bounded(seconds: Any) -> None:
    with pytest.raises(PermanentActionError, match=r"parameters\.timeout"):
        await http({"url": "http://127.0.0.1:1/", "timeout": seconds})


class Slow(BaseHTTPRequestHandler):
    """Sends its headers, then a byte every 0.2 s: each read is quick, the whole is not."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        return None


async def test_the_timeout_bounds_the_whole_request() -> None:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Slow)) as port:
        started = time.monotonic()
        with pytest.raises(ActionError, match=r"timed out after 1s$"):
            await http({"url": f"http://127.0.0.1:{port}/", "timeout": 1})
        assert time.monotonic() - started < 3


class Endless(BaseHTTPRequestHandler):
    """Streams 64 MiB (generated as it goes, never held whole), counting what it managed to
    send; `/declared` says its length first."""

    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        if self.path == "/declared":
            self.send_header("content-length", str(64 * MiB))
        self.end_headers()
        chunk = b"x" * 65536
        try:
            for _ in range(64 * MiB // len(chunk)):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def endless() -> Iterator[str]:
    Endless.sent = 0
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Endless)) as port:
        yield f"http://127.0.0.1:{port}"


class PeakMemory:
    """The most this process's resident memory grew above where it was at the start. Linux
    resets the high-water mark on request (/proc/self/clear_refs); elsewhere, the peak of the
    process's life stands in (weaker: an earlier, higher peak hides growth)."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.start_kib = self._resident() if self.exact else self._lifetime_peak()

    def grown_kib(self) -> int:
        peak = self._status("VmHWM") if self.exact else self._lifetime_peak()
        return peak - self.start_kib

    def _resident(self) -> int:
        return self._status("VmRSS")

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise LookupError(field)

    @staticmethod
    def _lifetime_peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


async def test_a_large_answer_is_cut_off_while_it_streams_in(endless: str) -> None:
    memory = PeakMemory()
    started = time.monotonic()
    with pytest.raises(
        ActionError, match=r"^http: response body larger than 1048576 bytes \(WORKFLOW_HTTP_MAX"
    ):
        await http({"url": f"{endless}/"})
    assert time.monotonic() - started < 5
    grown = memory.grown_kib()
    assert grown < 16 * 1024, f"the process grew by {grown} KiB"
    assert Endless.sent < 32 * MiB  # the rest was never asked for


async def test_a_declared_length_past_the_cap_is_refused_before_reading(
    endless: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKFLOW_HTTP_MAX_BYTES", "1000")
    with pytest.raises(ActionError, match=r"larger than 1000 bytes \(WORKFLOW_HTTP_MAX_BYTES\)"):
        await http({"url": f"{endless}/declared"})
    assert Endless.sent < 32 * MiB


async def test_the_cap_is_configurable(endpoint: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    # The recorder answers {"label": "cap", "hit": N}: 26 bytes while N < 10.
    monkeypatch.setenv("WORKFLOW_HTTP_MAX_BYTES", "25")
    with pytest.raises(ActionError, match="larger than 25 bytes"):
        await http({"url": endpoint.url("cap")})
    monkeypatch.setenv("WORKFLOW_HTTP_MAX_BYTES", "26")
    assert (await http({"url": endpoint.url("cap")}))["body"]["label"] == "cap"


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keeps connections open: the client pools them

    def do_GET(self) -> None:
        body = b'{"hello": "tls"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def certificate_server(name: str, ca: trustme.CA) -> ThreadingHTTPServer:
    """An HTTPS server on 127.0.0.1 with a certificate for `name` alone."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server


async def test_tls_is_verified_for_the_host_name_though_the_address_is_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    connector = Connector()
    client = use_client(monkeypatch, connector, trusting)
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", "127.0.0.1")
    try:
        with (
            serving(certificate_server("localhost", ca)) as good,
            serving(certificate_server("elsewhere.example", ca)) as wrong,
        ):
            output = await http({"url": f"https://localhost:{good}/"})
            assert output["body"] == {"hello": "tls"}
            with pytest.raises(ActionError, match="failed: could not connect"):
                await http({"url": f"https://localhost:{wrong}/"})
            # The same address under another name (not on the certificate): the connection
            # verified for `localhost`, still open in the pool, must not carry it.
            with pytest.raises(ActionError, match="failed: could not connect"):
                await http({"url": f"https://127.0.0.1:{good}/"})
            assert connector.asked == ["127.0.0.1"] * 3  # each checked, each by address
    finally:
        await client.aclose()


@pytest.mark.parametrize("backend", EXECUTION_BACKENDS, indirect=True)
async def test_a_refused_destination_fails_the_task_at_once_on_every_executor(
    client: httpx.AsyncClient, stub: WorkflowExecutionAsyncStub
) -> None:
    # 10.255.255.1 is private and not admitted (the tests admit 127.0.0.1): refused before
    # any connection, so nothing is sent there.
    task = {
        "name": "inward",
        "order": 1,
        "action": "http",
        "max_attempts": 3,
        "parameters": {"url": "http://10.255.255.1/"},
    }
    final = await run(client, stub, [task])
    assert final.status == "failed"
    refused = by_name(final)["inward"]
    assert (refused.status, refused.attempts) == ("failed", 1)
    assert refused.error.startswith("http: destination refused: 10.255.255.1 ")
    assert "WORKFLOW_HTTP_ALLOW" in refused.error


@contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[int]:
    """Runs an HTTP server in a thread for the `with` block, which gets its port."""
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
