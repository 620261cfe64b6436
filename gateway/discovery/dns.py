"""``discovery: {type: dns}``: a name re-resolved every ``refresh``; its A/AAAA records become
the backends (``scheme://address:port``), as for a Kubernetes headless Service. Like Envoy's
STRICT_DNS, a failed lookup (timeout, SERVFAIL) keeps the last set, while an authoritative "no
such name"/"no records" empties it: the service really has no endpoints."""

from __future__ import annotations

import asyncio
import logging
import socket

from gateway.config.model import DiscoveryConfig
from gateway.discovery.source import DiscoveryError
from gateway.fleet import BackendSpec

log = logging.getLogger("tailgate.discovery")


def specs_from_addresses(
    addresses: list[str], scheme: str, port: int, group: str
) -> list[BackendSpec]:
    specs = []
    for address in sorted(set(addresses)):
        host = f"[{address}]" if ":" in address else address
        specs.append(BackendSpec(f"{host}:{port}", f"{scheme}://{host}:{port}", 1.0, group))
    return specs


async def resolve(name: str, resolver: str | None, timeout_s: float) -> list[str]:
    """A and AAAA addresses of ``name``; [] when the name has none; DiscoveryError on failure."""
    if resolver is None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                return []
            raise DiscoveryError(str(exc)) from None
        except TimeoutError:
            raise DiscoveryError("DNS lookup timed out") from None
        return [str(info[4][0]) for info in infos]
    return await _resolve_with(name, resolver, timeout_s)


async def _resolve_with(name: str, resolver: str, timeout_s: float) -> list[str]:
    """Ask one specific DNS server (``host`` or ``host:port``), with dnspython."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    host, _, port = resolver.rpartition(":") if resolver.count(":") == 1 else (resolver, "", "")
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [host or resolver]
    r.port = int(port) if port else 53
    r.lifetime = timeout_s
    addresses: list[str] = []
    failure: str | None = None
    for rdtype in ("A", "AAAA"):
        try:
            answer = await r.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            failure = f"{type(exc).__name__}: {exc}"
            continue
        addresses.extend(rdata.address for rdata in answer)
    if failure is not None and not addresses:
        # One family answered "none" and the other failed: we do not know the set.
        raise DiscoveryError(failure)
    return addresses


class DnsSource:
    """Resolves ``discovery.name`` (through ``discovery.resolver`` when given)."""

    def __init__(self, config: DiscoveryConfig) -> None:
        assert config.name is not None  # the config requires it for this type
        self.config = config

    async def look(self) -> list[BackendSpec] | None:
        cfg = self.config
        assert cfg.name is not None
        try:
            addresses = await resolve(cfg.name, cfg.resolver, timeout_s=min(cfg.refresh, 5.0))
        except DiscoveryError as exc:
            log.warning("DNS lookup of %s failed (%s); keeping the last backend set", cfg.name, exc)
            return None
        specs = specs_from_addresses(addresses, cfg.scheme, cfg.port, cfg.group)
        if not specs:
            log.warning("DNS name %s has no addresses: no backends", cfg.name)
        return specs
