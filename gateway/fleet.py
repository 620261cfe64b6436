"""The set of backends the gateway routes to, grouped, with their state kept across changes.

Membership changes (config reload, discovery) go through :meth:`Fleet.apply`: a backend that
stays (same name and URL) keeps its signals and health; a new one starts fresh from the fleet's
prior; a removed one leaves the fleet at once and its requests in flight finish on their own.

Picking happens per request, so the list of routable endpoints of a group is cached and rebuilt
only when something changed (a health transition bumps :attr:`Fleet.version`) or after
``refresh_s`` — which keeps a P2C pick O(1) in the number of backends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gateway.endpoint import Endpoint
from gateway.health.circuit import EndpointHealth
from gateway.health.outlier import in_panic


@dataclass(frozen=True)
class BackendSpec:
    """What configuration or discovery says about one backend."""

    name: str
    url: str
    weight: float = 1.0
    group: str = "default"
    configured_name: bool = False  # named by the operator, not derived from the address


@dataclass
class _GroupCache:
    version: int
    built_at: float
    routable: list[Endpoint]
    panic: bool


class Fleet:
    """Endpoints by name and by group, plus the cached routable view of each group."""

    def __init__(
        self,
        make_endpoint: Callable[[BackendSpec, float], Endpoint],
        panic_threshold_percent: float,
        refresh_s: float = 0.05,
    ) -> None:
        self._make_endpoint = make_endpoint
        self.panic_threshold_percent = panic_threshold_percent
        self.refresh_s = refresh_s
        self.endpoints: dict[str, Endpoint] = {}
        self.groups: dict[str, list[Endpoint]] = {}
        self.group_healths: dict[str, list[EndpointHealth]] = {}  # for the outlier detector
        self.version = 0
        self._cache: dict[str, _GroupCache] = {}

    def apply(self, specs: Iterable[BackendSpec], now: float) -> tuple[list[str], list[str]]:
        """Make the fleet match ``specs``; return the names added and removed."""
        wanted = {spec.name: spec for spec in specs}
        added: list[str] = []
        removed: list[str] = []
        for name, endpoint in list(self.endpoints.items()):
            spec = wanted.get(name)
            if spec is None or str(endpoint.url) != spec.url.rstrip("/"):
                del self.endpoints[name]  # its requests in flight hold it until they finish
                removed.append(name)
        for name, spec in wanted.items():
            existing = self.endpoints.get(name)
            if existing is None:
                self.endpoints[name] = self._make_endpoint(spec, now)
                added.append(name)
            else:
                existing.weight = spec.weight
                existing.group = spec.group
        groups: dict[str, list[Endpoint]] = {}
        for endpoint in self.endpoints.values():
            groups.setdefault(endpoint.group, []).append(endpoint)
        self.groups = groups
        self.group_healths = {g: [e.health for e in members] for g, members in groups.items()}
        self.invalidate()
        return added, removed

    def invalidate(self) -> None:
        """Something about routability changed: rebuild cached views on next use."""
        self.version += 1

    def candidates(self, group: str, now: float) -> tuple[list[Endpoint], bool]:
        """Routable endpoints of ``group`` and whether the group is in panic.

        In panic (fewer than ``panic_threshold_percent`` of the group routable, Envoy's rule)
        every endpoint of the group is a candidate, so load spreads instead of piling onto the
        few survivors.
        """
        cache = self._cache.get(group)
        if (
            cache is not None
            and cache.version == self.version
            and now - cache.built_at < self.refresh_s
        ):
            return cache.routable, cache.panic
        members = self.groups.get(group, [])
        routable = [e for e in members if e.routable(now)]
        panic = in_panic(len(routable), len(members), self.panic_threshold_percent)
        if panic:
            routable = list(members)
        self._cache[group] = _GroupCache(self.version, now, routable, panic)
        return routable, panic
