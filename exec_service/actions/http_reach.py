"""Where the `http` action may connect: public addresses, and what WORKFLOW_HTTP_ALLOW admits.

Refused unless admitted: loopback, private (RFC 1918, fc00::/7), link-local (169.254.0.0/16,
fe80::/10, cloud metadata servers among them), shared (100.64.0.0/10), multicast, unspecified
and reserved addresses, and IPv4 addresses mapped into IPv6. The check is made on the address
the request then connects to: the host is resolved once, here, and the connection goes to that
address (with the host name kept for the Host header, TLS's SNI and certificate check), so a
name that resolves elsewhere the second time (DNS rebinding) gains nothing.

WORKFLOW_HTTP_ALLOW: a comma list of host names (`api.internal`), addresses, CIDRs
(`10.0.0.0/8`), or `*` (anything).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ALLOW_VARIABLE = "WORKFLOW_HTTP_ALLOW"


class DestinationRefused(Exception):
    """The destination is not one the action may reach; the message says why."""


@dataclass(frozen=True)
class Allowed:
    everything: bool
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    def admits(self, host: str, address: IPAddress) -> bool:
        if self.everything or host.lower().rstrip(".") in self.hosts:
            return True
        return any(address in network for network in self.networks)


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
            hosts.add(item.lower().rstrip("."))
    return Allowed(everything, frozenset(hosts), tuple(networks))


def allowed() -> Allowed:
    """WORKFLOW_HTTP_ALLOW as this process's environment has it now."""
    return parse_allowed(os.environ.get(ALLOW_VARIABLE, ""))


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return False  # refused whatever it maps to: a way around IPv4 filters
    return address.is_global and not address.is_multicast


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses (itself, if it is one), in the resolver's order."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DestinationRefused(f"{host} does not resolve ({exc.strerror})") from None
    addresses: list[IPAddress] = []
    for _, _, _, _, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def destination(host: str, port: int) -> IPAddress:
    """The address to connect to: the first of the host's that may be reached. Raises
    DestinationRefused naming the address and the variable that would admit it."""
    admitted = allowed()
    addresses = await resolve(host, port)
    for address in addresses:
        if is_public(address) or admitted.admits(host, address):
            return address
    shown = ", ".join(str(address) for address in addresses) or "nothing"
    raise DestinationRefused(
        f"{host} resolves to {shown}, which is not a public address (loopback, private, "
        f"link-local, shared or multicast); {ALLOW_VARIABLE} can admit it"
    )
