"""Where the `http` action may connect: public addresses, and what WORKFLOW_HTTP_ALLOW admits.

Refused unless admitted: loopback, private (RFC 1918, fc00::/7, the old site-local fec0::/10),
link-local (169.254.0.0/16, fe80::/10, cloud metadata servers among them), shared
(100.64.0.0/10), multicast, unspecified and reserved addresses; an IPv6 address that stands for
an IPv4 one (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged as that
IPv4 address.

The check is part of making the connection: the action's client connects through
CheckedBackend, which resolves the host once, checks the address and connects to that very
address. A name that resolves elsewhere the second time (DNS rebinding) gains nothing, and
nothing else in the process (redirects, retries, a pooled connection) can open a connection
around the check. The URL keeps its host name, so the Host header, TLS's SNI and the
certificate check are the name's, and connections are pooled per name: one verified for
`a.example` never carries a request for `b.example` that resolves to the same address.

WORKFLOW_HTTP_ALLOW: a comma list of host names (`api.internal`, admitted whatever they resolve
to), addresses, CIDRs (`10.0.0.0/8`), or `*` (anything).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx

from models.settings import HTTP_ALLOW, http_allow

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The well-known prefix a NAT64 gateway translates to the IPv4 address in the last 32 bits.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Pooled connections of the action's client (httpx's defaults).
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


class DestinationRefused(Exception):
    """The destination is not one the action may reach; the message says why."""


class Unresolvable(httpcore.ConnectError):
    """The host name does not resolve (now: DNS may answer on another attempt)."""


def as_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for on the way out (mapped, NAT64, 6to4), else the
    address itself."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket connects to it over IPv4
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour or address


def is_public(address: IPAddress) -> bool:
    address = as_ipv4(address)
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return False  # deprecated, but still routed locally by some networks
    return address.is_global and not (address.is_multicast or address.is_reserved)


@dataclass(frozen=True)
class Allowed:
    everything: bool
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    def admits(self, host: str, address: IPAddress) -> bool:
        if self.everything or _host_key(host) in self.hosts:
            return True
        return any(
            candidate in network
            for candidate in {address, as_ipv4(address)}
            for network in self.networks
        )


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


@functools.lru_cache(maxsize=8)
def parse_allowed(text: str) -> Allowed:
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    everything = False
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item == "*":
            everything = True
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            hosts.add(_host_key(item))
    return Allowed(everything, frozenset(hosts), tuple(networks))


def allowed() -> Allowed:
    """WORKFLOW_HTTP_ALLOW as this process's environment has it now."""
    return parse_allowed(http_allow())


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses (itself, if it is one), in the resolver's order. Off the event
    loop (the loop's getaddrinfo runs in its executor); odd spellings of addresses
    (`2130706433`, `0x7f.1`) come back as the addresses the system would connect to."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "not a host name"
        raise Unresolvable(f"{host} does not resolve ({reason})") from None
    addresses: list[IPAddress] = []
    for _, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def destination(host: str, port: int) -> IPAddress:
    """The address to connect to: the first of the host's that may be reached. Raises
    DestinationRefused naming the addresses and the variable that would admit them, or
    Unresolvable."""
    admitted = allowed()
    addresses = await resolve(host, port)
    for address in addresses:
        if is_public(address) or admitted.admits(host, address):
            return address
    shown = ", ".join(str(address) for address in addresses) or "no address"
    which = shown if shown == host.strip("[]") else f"{host} resolves to {shown}, which"
    raise DestinationRefused(
        f"{which} is not a public address (loopback, private, link-local, shared, multicast or "
        f"unspecified); {HTTP_ALLOW} can admit it"
    )


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the check in front: every connection the client
    opens goes to an address `destination` chose for the host it was asked for."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):  # the connect timeout covers the lookup too
                address = await destination(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"{host} did not resolve in time") from None
        return await self.inner.connect_tcp(
            str(address), port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("a Unix socket is not a destination")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that connects through CheckedBackend. (httpx
    takes no network backend of its own: the pool it makes is replaced by one made as it
    makes it, with ours.) No proxies: a proxy would make the connection, not us."""

    def __init__(
        self,
        verify: ssl.SSLContext | bool = True,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=context, trust_env=False, limits=LIMITS)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=LIMITS.max_connections,
            max_keepalive_connections=LIMITS.max_keepalive_connections,
            keepalive_expiry=LIMITS.keepalive_expiry,
            network_backend=CheckedBackend(backend),
        )


def checked_client(
    verify: ssl.SSLContext | bool = True, backend: httpcore.AsyncNetworkBackend | None = None
) -> httpx.AsyncClient:
    """An HTTP client that reaches only what the rules above admit, follows no redirect and
    reads no proxy or certificate settings from the environment. `backend` is the connector
    behind the check (tests put one there that records or refuses)."""
    transport = CheckedTransport(verify, backend)
    return httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False)
