"""SSRF protection for page reading: refuse internal addresses, then connect to the
address that was checked.

Search results are attacker-controlled URLs. Before any byte is sent, the host is
resolved (``loop.getaddrinfo``) and every address is checked: loopback, private,
link-local, multicast, reserved, unspecified, shared (CGNAT) and cloud metadata addresses
are refused unless an explicit allowlist opens them. The request then goes to the checked
IP (URL rewritten to it; ``Host`` header kept; TLS SNI and certificate check against the
real name via httpx's ``sni_hostname`` extension), so a DNS answer that changes between
check and connect (rebinding) cannot redirect us.

:class:`SSRFTransport` does this for every request a client sends, so each redirect hop
is checked too. Tests and local corpora on 127.0.0.1 use ``allow_cidrs=["127.0.0.1/32"]``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx

__all__ = [
    "IPAddress",
    "Resolver",
    "SSRFBlocked",
    "SSRFPolicy",
    "SSRFTransport",
    "Target",
    "check_scheme",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Instance metadata services hand out cloud credentials: refused even when an allowlisted
# range covers them (AWS, GCP, Azure, OpenStack, Oracle; AWS ECS/IPv6; Alibaba).
METADATA_IPS: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "fd00:ec2::254", "fd00:ec2::23",
    "100.100.100.200", "192.0.0.192",
))
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data",
                            "metadata.azure.internal"})
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class SSRFBlocked(Exception):
    """The URL points somewhere page reading must not go; ``reason`` says why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"refused {url}: {reason}")
        self.url = url
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to ``ip``, present ``host`` (Host header, SNI)."""

    scheme: str
    host: str
    port: int
    ip: IPAddress


async def _system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


class SSRFPolicy:
    """Which destinations page reading may contact.

    ``allow_hosts`` are names (exact, or ``.example.org`` for a domain and its
    subdomains) whose addresses are trusted; ``allow_cidrs`` are ranges such as
    ``127.0.0.1/32`` or ``10.1.0.0/16`` that are opened. Only http and https are allowed.
    """

    def __init__(self, allow_hosts: Iterable[str] = (), allow_cidrs: Iterable[str] = (),
                 *, resolver: Resolver | None = None) -> None:
        self.allow_hosts = frozenset(h.strip().lower().rstrip(".") for h in allow_hosts
                                     if h.strip())
        self.allow_cidrs = tuple(ipaddress.ip_network(c.strip(), strict=False)
                                 for c in allow_cidrs if c.strip())
        self._resolve = resolver or _system_resolver

    def __repr__(self) -> str:
        return (f"SSRFPolicy(allow_hosts={sorted(self.allow_hosts)}, "
                f"allow_cidrs={[str(c) for c in self.allow_cidrs]})")

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.allow_hosts or any(
            a.startswith(".") and (host.endswith(a) or host == a[1:]) for a in self.allow_hosts)

    def blocked_reason(self, ip: IPAddress) -> str | None:
        """None if ``ip`` may be contacted, else a short human reason."""
        if ip in METADATA_IPS:
            return f"{ip} is a cloud metadata address"
        if isinstance(ip, ipaddress.IPv6Address):
            embedded = ip.ipv4_mapped or ip.sixtofour or (
                ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
            if embedded is not None:
                reason = self.blocked_reason(embedded)
                return f"{ip} embeds {reason}" if reason else None
        if any(ip in net for net in self.allow_cidrs):
            return None
        for test, label in (
            (ip.is_loopback, "a loopback"), (ip.is_unspecified, "an unspecified"),
            (ip.is_link_local, "a link-local"), (ip.is_multicast, "a multicast"),
            (ip.is_reserved, "a reserved"), (ip.is_private, "a private"),
            (ip in _CGNAT, "a shared (carrier-grade NAT)"), (not ip.is_global, "a non-public"),
        ):
            if test:
                return f"{ip} is {label} address"
        return None

    async def check(self, url: httpx.URL | str) -> Target:
        """Resolve and check ``url``; the Target's ip is the one to connect to."""
        url = check_scheme(url)
        host = url.raw_host.decode("ascii").lower().rstrip(".")
        if not host:
            raise SSRFBlocked(str(url), "no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        if host in METADATA_HOSTS:
            raise SSRFBlocked(str(url), f"{host} is a cloud metadata host")
        trusted = self.host_allowed(host)
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0])
                             for a in await self._resolve(host, port)]
            except (OSError, UnicodeError) as exc:
                raise httpx.ConnectError(f"cannot resolve {host}") from exc
        if not addresses:
            raise httpx.ConnectError(f"cannot resolve {host}")
        reasons: list[str] = []
        for ip in dict.fromkeys(addresses):  # first allowed address wins, in resolver order
            reason = (f"{ip} is a cloud metadata address" if ip in METADATA_IPS
                      else None if trusted else self.blocked_reason(ip))
            if reason is None:
                return Target(url.scheme, host, port, ip)
            reasons.append(reason)
        shown = reasons[0] if _is_ip_literal(host) else f"{host} resolves to {reasons[0]}"
        raise SSRFBlocked(str(url), f"{shown} (SSRF protection)")


def check_scheme(url: httpx.URL | str) -> httpx.URL:
    """Only http and https: no file:, gopher:, ftp: or data: URLs from search results."""
    parsed = httpx.URL(url) if isinstance(url, str) else url
    if parsed.scheme not in ("http", "https"):
        raise SSRFBlocked(str(url), f"scheme {parsed.scheme!r} is not allowed "
                                    "(only http and https)")
    return parsed


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class SSRFTransport(httpx.AsyncBaseTransport):
    """An httpx transport that checks every request with ``policy`` and connects to the
    checked IP. Wrap any inner transport (tests pass a recording one)."""

    def __init__(self, policy: SSRFPolicy, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.policy = policy
        # No keep-alive: a pooled connection is keyed by IP, and reusing one made for
        # another host's SNI would skip that host's certificate check.
        self.inner = inner or httpx.AsyncHTTPTransport(
            retries=0, limits=httpx.Limits(max_keepalive_connections=0))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = await self.policy.check(request.url)
        extensions = dict(request.extensions)
        if target.scheme == "https":
            extensions["sni_hostname"] = target.host
        pinned = httpx.Request(request.method, request.url.copy_with(host=str(target.ip)),
                               headers=request.headers, stream=request.stream,
                               extensions=extensions)
        return await self.inner.handle_async_request(pinned)

    async def aclose(self) -> None:
        await self.inner.aclose()
