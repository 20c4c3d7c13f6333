"""Where ``/v1/fetch`` may go: a host allow-list and no private addresses (SSRF guard).

An agent chooses the URL, so without a guard it could make keel fetch the cloud metadata
service, an admin port on localhost or anything else inside the network. Two settings
decide (patterns are shell globs on ``host`` or ``host:port``, case-insensitive):

* ``wallets.x402.hosts`` (default ``["*"]``): the hosts agents may fetch at all;
* ``wallets.x402.private_hosts`` (default empty): hosts that may resolve to loopback,
  private, link-local or other non-public addresses (e.g. ``"127.0.0.1:*"`` for the
  sandbox).

Names are checked on the addresses the connection really uses: the resolver refuses a
name whose answer contains a non-public address, so DNS rebinding cannot slip past a check
made earlier. IP literals, which aiohttp does not resolve, are checked up front.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from fnmatch import fnmatchcase
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from keel.errors import EgressDenied


class EgressRefused(OSError):
    """Raised inside the resolver; aiohttp wraps it, the client unwraps it."""


# prefixes whose low 32 bits are an IPv4 address: NAT64 (well-known and local-use), SIIT
_V4_IN_LOW_BITS = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
                   ipaddress.ip_network("::ffff:0:0:0/96"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64, SIIT,
    compatible)."""
    out: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    if any(ip in net for net in _V4_IN_LOW_BITS) or int(ip) >> 32 == 0:  # + ::a.b.c.d
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return out


def is_public(address: str) -> bool:
    """Globally routable unicast, and so is every IPv4 address it embeds."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        return all(v4.is_global and not v4.is_multicast for v4 in _embedded_ipv4(ip))
    return True


class EgressPolicy:
    def __init__(self, hosts: list[str], private_hosts: list[str]) -> None:
        self.hosts = [h.lower() for h in hosts]
        self.private_hosts = [h.lower() for h in private_hosts]

    @staticmethod
    def _matches(patterns: list[str], host: str, port: int) -> bool:
        return any(fnmatchcase(host, p) or fnmatchcase(f"{host}:{port}", p) for p in patterns)

    def check_url(self, url: str) -> None:
        """Refuse before any connection: host not allowed, or a non-public IP literal.

        The URL is read with yarl, as aiohttp will connect to it: its host after IDNA and
        NFKC normalisation (``127。0。0。1`` is ``127.0.0.1``), not what ``urlsplit`` sees."""
        try:
            u = URL(url)
            host, port = (u.host or "").lower(), u.port
        except ValueError as exc:
            raise EgressDenied(f"'url' is not a valid URL: {exc}", param="url") from None
        if not host or port is None:
            raise EgressDenied("'url' has no host to check", param="url")
        if not self._matches(self.hosts, host, port):
            raise EgressDenied(f"{host}:{port} is not on the fetch allow-list "
                               "(wallets.x402.hosts)", param="url")
        for address in literal_addresses(host):
            self.check_address(host, port, address)

    def check_address(self, host: str, port: int, address: str) -> None:
        if not is_public(address) and not self._matches(self.private_hosts, host, port):
            raise EgressDenied(
                f"{host} resolves to the non-public address {address}; keel does not fetch "
                "private, loopback or link-local addresses for agents unless the host is in "
                "wallets.x402.private_hosts", param="url")


def literal_addresses(host: str) -> list[str]:
    """The addresses an IP-literal host connects to, without DNS; [] for a name.

    aiohttp skips the resolver for anything it considers an IP address, including forms
    Python's ``ipaddress`` rejects but the C library accepts (``2130706433``, ``127.1``,
    ``017700000001``, ``127.0.0.1.``): those are decoded the way the connection will be
    made, and refused when they cannot be decoded."""
    bare = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(bare))]
    except ValueError:
        pass
    if not is_ip_address(bare) and not _NUMERIC.fullmatch(bare):
        return []
    try:
        infos = socket.getaddrinfo(bare, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        raise EgressDenied(f"{host} is not a valid IP address", param="url") from None
    return sorted({str(i[4][0]) for i in infos})


# inet_aton forms: 1-4 dot-separated decimal, octal (leading 0) or 0x-hex parts
_PART = r"(?:0[xX][0-9a-fA-F]*|[0-9]+)"
_NUMERIC = re.compile(rf"{_PART}(?:\.{_PART}){{0,3}}\.?")


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default, then refuses non-public answers for names not listed
    in ``private_hosts``."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self.inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        for a in answers:
            try:
                self.policy.check_address(host.lower(), port, a["host"])
            except EgressDenied as exc:
                raise EgressRefused(exc.message) from None
        return answers

    async def close(self) -> None:
        await self.inner.close()


def refusal(exc: Any) -> EgressDenied | None:
    """The :class:`EgressDenied` behind an aiohttp connector error, if that is what it is."""
    inner = getattr(exc, "os_error", None)
    if isinstance(inner, EgressRefused):
        return EgressDenied(str(inner), param="url")
    return None
