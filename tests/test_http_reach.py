"""The `http` action's reach (contract section 8): destinations that are not public are refused
before any connection, unless WORKFLOW_HTTP_ALLOW admits them; the connection goes to the
address that was checked, with TLS still verified for the host name; a large answer is cut off
while it streams in. No test here sends anything to an address outside this machine: the
refused ones are refused before a connection is tried (the client is replaced by one that
fails the test if used)."""

from __future__ import annotations

import resource
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import trustme

from exec_service.actions import builtin
from exec_service.actions.builtin import ActionError, PermanentActionError, http
from tests.conftest import EXECUTION_BACKENDS
from tests.executions import by_name, run
from tests.recorder import Recorder, recorder

if TYPE_CHECKING:
    from protos.execution_pb2_grpc import WorkflowExecutionAsyncStub


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Recorder]:
    with recorder() as running:
        yield running


@pytest.fixture
def no_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", "")


class NoConnection:
    """Stands in for the http client where a test shows a refusal: any use fails the test."""

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a connection was attempted: {args}")


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:{port}/", "127.0.0.1"),
        ("http://localhost:{port}/", "127.0.0.1"),  # a name that resolves to loopback
        ("http://[::1]:{port}/", "::1"),
        ("http://2130706433:{port}/", "127.0.0.1"),  # loopback spelled as one number
        ("http://0x7f.1:{port}/", "127.0.0.1"),
        ("http://[::ffff:127.0.0.1]:{port}/", "::ffff:7f00:1"),
        ("http://0.0.0.0:{port}/", "0.0.0.0"),
        ("http://10.0.0.1/", "10.0.0.1"),
        ("http://172.16.0.1/", "172.16.0.1"),
        ("http://192.168.1.1/", "192.168.1.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://100.64.0.1/", "100.64.0.1"),
        ("http://224.0.0.1/", "224.0.0.1"),
        ("http://[fe80::1]/", "fe80::1"),
        ("http://[fc00::1]/", "fc00::1"),
        ("https://[::]/", "::"),
    ],
)
async def test_destinations_that_are_not_public_are_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, no_allow: None, endpoint: Recorder, url: str, address: str
) -> None:
    monkeypatch.setattr(builtin, "_http_client", NoConnection)
    port = endpoint.base.rsplit(":", 1)[1]
    with pytest.raises(PermanentActionError) as refused:
        await http({"url": url.format(port=port)})
    message = str(refused.value)
    assert message.startswith("http: destination refused: ")
    assert address in message
    assert "WORKFLOW_HTTP_ALLOW" in message


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


async def test_connection_errors_do_not_tell_closed_ports_from_open_ones() -> None:
    with pytest.raises(ActionError) as closed:
        await http({"url": "http://127.0.0.1:1/", "timeout": 2})
    assert str(closed.value) == "http: GET http://127.0.0.1:1/ failed: could not connect"


@pytest.mark.parametrize("seconds", [0, -1, "5", 1e9, float("inf"), True])
async def test_the_timeout_is_bounded(seconds: Any) -> None:
    with pytest.raises(PermanentActionError, match=r"parameters\.timeout"):
        await http({"url": "http://127.0.0.1:1/", "timeout": seconds})


class Endless(BaseHTTPRequestHandler):
    """Streams 64 MiB without a length, counting what it managed to send."""

    sent = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/octet-stream")
        self.end_headers()
        chunk = b"x" * 65536
        try:
            for _ in range(1024):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def endless() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_large_answer_is_cut_off_while_it_streams_in(endless: str) -> None:
    Endless.sent = 0
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    started = time.monotonic()
    with pytest.raises(ActionError, match=r"more than 1048576 bytes \(WORKFLOW_HTTP_MAX_BYTES\)"):
        await http({"url": endless})
    assert time.monotonic() - started < 5
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown < 16 * 1024, f"the process grew by {grown} KiB"
    assert Endless.sent < 32 * 1024 * 1024  # the rest was never asked for


def certificate_server(name: str, ca: trustme.CA) -> tuple[HTTPServer, int]:
    """An HTTPS server on 127.0.0.1 with a certificate for `name`."""

    class Hello(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"hello": "tls"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Hello)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


async def test_tls_is_verified_for_the_host_name_though_the_address_is_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ca = trustme.CA()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    client = httpx.AsyncClient(verify=trusting, trust_env=False)
    monkeypatch.setattr(builtin, "_http_client", lambda: client)
    monkeypatch.setenv("WORKFLOW_HTTP_ALLOW", "127.0.0.1")
    good, good_port = certificate_server("localhost", ca)
    wrong, wrong_port = certificate_server("elsewhere.example", ca)
    try:
        output = await http({"url": f"https://localhost:{good_port}/"})
        assert output["body"] == {"hello": "tls"}
        with pytest.raises(ActionError, match="failed"):
            await http({"url": f"https://localhost:{wrong_port}/"})
    finally:
        await client.aclose()
        for server in (good, wrong):
            server.shutdown()
            server.server_close()


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
    assert refused.error.startswith("http: destination refused: ")
    assert "WORKFLOW_HTTP_ALLOW" in refused.error
