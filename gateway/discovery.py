"""Discovery: where the backend set comes from, and how it changes while the gateway runs.

* ``static``: the ``backends:`` list of the config (changes arrive by config reload).
* ``file``: a YAML or JSON list of backends (``[{url, name, weight, group}]``), re-read when
  its contents change; an invalid file is logged and the last good set keeps serving.
* ``dns``: a name re-resolved every ``refresh``; its A/AAAA records become the backends
  (``scheme://address:port``), as for a Kubernetes headless Service. Like Envoy's STRICT_DNS,
  a failed lookup (timeout, SERVFAIL) keeps the last set, while an authoritative "no such
  name"/"no records" empties it — the service really has no endpoints.

Each source yields complete backend sets; :class:`Discovery` hands them to the runtime, which
keeps the state of backends that stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import yaml

from gateway.config.model import BackendConfig, DiscoveryConfig
from gateway.config.schema import ConfigError, Problem, load
from gateway.fleet import BackendSpec

log = logging.getLogger("tailgate.discovery")


class DiscoveryError(Exception):
    """A lookup failed in a way that says nothing about the backend set: keep the last one."""


def parse_backend_file(text: str, group: str) -> list[BackendSpec]:
    """Backends from a discovery file; raises :class:`ConfigError` naming each bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("<file>", f"not valid YAML/JSON: {exc}")]) from None
    if isinstance(data, dict) and "backends" in data:
        data = data["backends"]
    if not isinstance(data, list):
        raise ConfigError([Problem("<file>", "expected a list of backends")])
    problems: list[Problem] = []
    specs: list[BackendSpec] = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"url": item}
        backend = load(BackendConfig, item, f"backends[{i}]", problems)
        if backend is not None:
            specs.append(
                BackendSpec(
                    backend.display_name,
                    backend.url,
                    backend.weight,
                    backend.group if "group" in item else group,
                    configured_name=backend.name is not None,
                )
            )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        problems.append(Problem("<file>", "backend names (or addresses) must be unique"))
    if problems:
        raise ConfigError(problems)
    return specs


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


class Discovery:
    """Runs one discovery source in the background and applies every new backend set."""

    def __init__(self, config: DiscoveryConfig, apply: Callable[[list[BackendSpec]], None]) -> None:
        self.config = config
        self._apply = apply
        self._task: asyncio.Task[None] | None = None
        self._last: list[BackendSpec] | None = None
        self._file_digest: str | None = None
        self.refreshed = asyncio.Event()  # set after each successful look (tests wait on it)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"discovery:{self.config.type}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh_once(self) -> None:
        cfg = self.config
        if cfg.type == "dns":
            assert cfg.name is not None
            try:
                addresses = await resolve(cfg.name, cfg.resolver, timeout_s=min(cfg.refresh, 5.0))
            except DiscoveryError as exc:
                log.warning(
                    "DNS lookup of %s failed (%s); keeping the last backend set", cfg.name, exc
                )
                return
            specs = specs_from_addresses(addresses, cfg.scheme, cfg.port, cfg.group)
            if not specs:
                log.warning("DNS name %s has no addresses: no backends", cfg.name)
        elif cfg.type == "file":
            assert cfg.path is not None
            try:
                raw = Path(cfg.path).read_bytes()
            except OSError as exc:
                log.warning("cannot read discovery file %s: %s", cfg.path, exc.strerror)
                return
            digest = hashlib.sha256(raw).hexdigest()
            if digest == self._file_digest:
                self.refreshed.set()
                return
            try:
                specs = parse_backend_file(raw.decode("utf-8", "replace"), cfg.group)
            except ConfigError as exc:
                log.error("discovery file %s rejected; keeping the last set:\n%s", cfg.path, exc)
                self._file_digest = digest
                return
            self._file_digest = digest
        else:
            return
        if specs != self._last:
            self._last = specs
            self._apply(specs)
        self.refreshed.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except Exception:  # a bug must not end discovery for good
                log.exception("discovery refresh failed")
            await asyncio.sleep(self.config.refresh)
