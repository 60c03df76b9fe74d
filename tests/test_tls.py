"""TLS with real clients: HTTPS and gRPC over TLS from `workflow serve`, mutual TLS on `workflow
grpc`, and `workflow api` reaching a TLS execution service with GRPC_TLS_CA. The CA and the
certificates are made here (trustme), for this test only."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import execution_pb2 as pb
from protos import execution_pb2_grpc as pb_grpc
from tests.live_server import Process, cli_process, environment, free_port, wait_until

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    # A client certificate from a CA the server does not trust.
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client, stranger = ca.issue_cert("client.example"), stranger_ca.issue_cert("client.example")
    paths = {name: folder / f"{name}.pem" for name in Certificates.__dataclass_fields__}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client_cert"]))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    stranger.cert_chain_pems[0].write_to_path(str(paths["stranger_cert"]))
    stranger.private_key_pem.write_to_path(str(paths["stranger_key"]))
    return Certificates(**paths)


def credentials(
    certificates: Certificates, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def serving(target: str, channel_credentials: grpc.ChannelCredentials | None) -> bool:
    channel = (
        grpc.secure_channel(target, channel_credentials)
        if channel_credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def tls_serve(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """`workflow serve` with HTTPS and gRPC over TLS; its HTTPS URL and gRPC target."""
    port, grpc_port = free_port(), free_port()
    database = tmp_path_factory.mktemp("tls-serve") / "db.sqlite3"
    arguments = [
        "serve",
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--tls-cert",
        str(certificates.cert),
        "--tls-key",
        str(certificates.key),
    ]
    with cli_process(arguments, environment(f"sqlite://{database}", None)) as process:
        url, target = f"https://localhost:{port}", f"localhost:{grpc_port}"
        wait_https(process, url, certificates.ca)
        yield url, target


def wait_https(process: Process, url: str, ca: Path) -> None:
    def healthy() -> bool:
        try:
            verify = ssl.create_default_context(cafile=str(ca))
            return httpx.get(f"{url}/healthz", verify=verify, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, process, url)


def test_https_and_grpc_over_tls(certificates: Certificates, tls_serve: tuple[str, str]) -> None:
    url, target = tls_serve
    verify = ssl.create_default_context(cafile=str(certificates.ca))
    made = httpx.post(
        f"{url}/workflows/",
        json={"name": "tls", "tasks": [{"name": "t", "order": 1}]},
        verify=verify,
    )
    assert made.status_code == 200, made.text
    # The HTTP plane reaches its own execution service (over a local socket).
    started = httpx.post(f"{url}/workflows/{made.json()['id']}/execute", verify=verify)
    assert started.status_code == 200, started.text
    with grpc.secure_channel(target, credentials(certificates)) as channel:
        stub = pb_grpc.WorkflowExecutionStub(channel)
        request = pb.GetWorkflowStatusRequest(execution_id=started.json()["id"])
        final = list(stub.WatchExecution(request, timeout=10))[-1]
        assert final.status == "completed"
    # Without the CA, neither plane is trusted; plaintext gRPC gets nothing.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz")
    assert not serving(target, grpc.ssl_channel_credentials())
    assert not serving(target, None)


@pytest.fixture(scope="module")
def mutual_tls_grpc(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    database = tmp_path_factory.mktemp("mtls") / "db.sqlite3"
    arguments = [
        "grpc",
        "--port",
        str(port),
        "--tls-cert",
        str(certificates.cert),
        "--tls-key",
        str(certificates.key),
        "--tls-client-ca",
        str(certificates.ca),
    ]
    target = f"localhost:{port}"
    good = credentials(certificates, certificates.client_cert, certificates.client_key)
    with cli_process(arguments, environment(f"sqlite://{database}", None)) as process:
        wait_until(lambda: serving(target, good), process, target)
        yield target


def test_mutual_tls_takes_only_clients_the_ca_signed(
    certificates: Certificates, mutual_tls_grpc: str
) -> None:
    assert serving(
        mutual_tls_grpc,
        credentials(certificates, certificates.client_cert, certificates.client_key),
    )
    assert not serving(mutual_tls_grpc, credentials(certificates))  # no client certificate
    stranger = credentials(certificates, certificates.stranger_cert, certificates.stranger_key)
    assert not serving(mutual_tls_grpc, stranger)


def test_the_api_reaches_a_tls_execution_service_with_grpc_tls_ca(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> None:
    database = f"sqlite://{tmp_path_factory.mktemp('split-tls')}/db.sqlite3"
    grpc_port, port = free_port(), free_port()
    grpc_arguments = ["grpc", "--port", str(grpc_port)]
    grpc_arguments += ["--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key)]
    target = f"localhost:{grpc_port}"
    with cli_process(grpc_arguments, environment(database, None)) as service:
        wait_until(lambda: serving(target, credentials(certificates)), service, target)
        env = {"GRPC_TARGET": target, "GRPC_TLS_CA": str(certificates.ca)}
        with cli_process(["api", "--port", str(port)], environment(database, env)) as api:
            url = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                try:
                    return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, api, url)
            body = {"name": "split", "tasks": [{"name": "t", "order": 1}]}
            workflow_id = httpx.post(f"{url}/workflows/", json=body).json()["id"]
            started = httpx.post(f"{url}/workflows/{workflow_id}/execute")
            assert started.status_code == 200, started.text + api.log()
