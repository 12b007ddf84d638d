"""Where an api_call tool may send a request: public addresses only, unless the operator says otherwise.

A tool's URL comes from the catalog and its path from the model, so a tool must not become a way into the
worker's own network: loopback, private (RFC 1918, unique-local), link-local (169.254.0.0/16, where cloud
metadata services answer), multicast and every other non-global address are refused. The check runs on the
addresses the name resolves to, at each hop (every redirect is checked again), and the request is then sent to
the very address that was checked (the host name travels in the Host header and TLS SNI), so a name that
resolves differently the second time (DNS rebinding) cannot slip through.

Exceptions: `TOOL_EGRESS_ALLOWLIST` names networks (CIDR) or host names (`orders.internal`, `*.corp.example`)
whose addresses are allowed whatever they are; dev mode allows loopback, so a tool can call a server on the
developer's machine. A name with any refused address is refused as a whole.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(Exception):
    """The policy forbids this target. One line, safe to show (it names the host and the kind of address)."""


class EgressLookupFailed(Exception):
    """The host name did not resolve (possibly transient: a retry may succeed)."""


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in resolver order. Tests replace this function to fake DNS."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class EgressPolicy:
    allow_loopback: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_allowlist(cls, entries: Iterable[str], *, allow_loopback: bool) -> EgressPolicy:
        """Entries are CIDR networks or addresses, host names, or `*.suffix` patterns; ValueError on nonsense."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            name = entry.lower().rstrip(".")
            bare = name.removeprefix("*.")
            if not bare or any(not part or len(part) > 63 for part in bare.split(".")) or "/" in bare:
                raise ValueError(f"{entry!r} is neither a network (CIDR) nor a host name")
            hosts.add(name)
        return cls(allow_loopback=allow_loopback, allowed_networks=tuple(networks), allowed_hosts=frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        if name in self.allowed_hosts:
            return True
        return any(p.startswith("*.") and name.endswith(p[1:]) for p in self.allowed_hosts)

    def refusal(self, address: IPAddress) -> str | None:
        """Why `address` is refused, or None when it may be used."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed_networks):
            return None
        if address.is_loopback:
            return None if self.allow_loopback else "a loopback address"
        if address.is_unspecified:
            return "not a public address"
        if address.is_link_local:
            return "a link-local address (cloud metadata)"
        if address.is_multicast:
            return "a multicast address"
        if address.is_private:
            return "a private address"
        if not address.is_global:
            return "not a public address"
        return None


async def vet(url: httpx.URL, policy: EgressPolicy) -> str:
    """The address to send the request for `url` to, or `EgressRefused` / `EgressLookupFailed`."""
    if url.scheme not in ("http", "https"):
        raise EgressRefused(f"only http and https URLs are allowed, not {url.scheme or 'none'}")
    host = url.host
    if not host:
        raise EgressRefused("the URL names no host")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        reason = policy.refusal(literal)
        if reason is not None:
            raise EgressRefused(f"{host} is {reason}")
        return str(literal)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = await resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise EgressLookupFailed(f"{host} does not resolve ({type(exc).__name__})") from None
    if not addresses:
        raise EgressLookupFailed(f"{host} does not resolve")
    if policy.host_allowed(host):
        return addresses[0]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        reason = policy.refusal(address)
        if reason is not None:
            raise EgressRefused(f"{host} resolves to {address}, {reason}")
    return addresses[0]
