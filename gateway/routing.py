"""Routes: match a request on path prefix, headers or the JSON body's ``model`` field, then
split it across weighted backend groups (a 90/10 canary, as an Istio VirtualService does).

Routes are tried in order; the first whose every condition holds wins. With no routes, or no
match, requests go to the ``default`` group, as if ``routes: [{groups: [{name: default}]}]``.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config.model import RouteConfig
from gateway.jsonscan import TooDeep, parse_json


@dataclass(frozen=True)
class Route:
    name: str
    path_prefix: str
    headers: tuple[tuple[str, str], ...]
    model: str | None
    groups: tuple[str, ...]
    cumulative_weights: tuple[float, ...]
    retry_non_idempotent: bool | None

    def matches(self, path: str, headers: Mapping[str, str], model: str | None) -> bool:
        if not path.startswith(self.path_prefix):
            return False
        if any(headers.get(name) != value for name, value in self.headers):
            return False
        return self.model is None or self.model == model

    def pick_group(self, rng: random.Random) -> str:
        """A group chosen with probability proportional to its weight."""
        if len(self.groups) == 1:
            return self.groups[0]
        point = rng.random() * self.cumulative_weights[-1]
        return self.groups[bisect.bisect_right(self.cumulative_weights, point)]


DEFAULT_ROUTE = Route("default", "/", (), None, ("default",), (1.0,), None)


class Router:
    """The ordered route table built from config."""

    def __init__(self, routes: tuple[RouteConfig, ...], default_group: str = "default") -> None:
        built: list[Route] = []
        for i, route in enumerate(routes):
            weights = [g.weight for g in route.groups]
            built.append(
                Route(
                    name=route.name or f"route{i}",
                    path_prefix=route.match.path_prefix,
                    headers=tuple(route.match.headers.items()),
                    model=route.match.model,
                    groups=tuple(g.name for g in route.groups),
                    cumulative_weights=tuple(itertools.accumulate(weights)),
                    retry_non_idempotent=route.retry_non_idempotent,
                )
            )
        self.routes = tuple(built)
        self.default = Route("default", "/", (), None, (default_group,), (1.0,), None)
        self.needs_model = any(r.model is not None for r in self.routes)

    def match(self, path: str, headers: Mapping[str, str], model: str | None) -> Route:
        for route in self.routes:
            if route.matches(path, headers, model):
                return route
        return self.default


@dataclass(frozen=True)
class ModelLookup:
    """The body's top-level ``model``, or why it could not be read (for a metric and the log)."""

    model: str | None
    undecided: str | None = None  # not_json (or not a JSON object) | too_deep


NO_MODEL = ModelLookup(None)  # decided: the body names no model


def find_model(body: bytes | None) -> ModelLookup:
    """The ``model`` field of an OpenAI-style JSON body.

    Only the top level is read, so nesting is bounded by the parser's own recursion check
    (``gateway/jsonscan.py``): a body too deep for it is ``too_deep``, never a crash.
    """
    if not body:
        return NO_MODEL
    try:
        payload = parse_json(body)
    except TooDeep:
        return ModelLookup(None, "too_deep")
    except ValueError:
        return ModelLookup(None, "not_json")
    if not isinstance(payload, dict):
        return ModelLookup(None, "not_json")
    model = payload.get("model")
    return ModelLookup(model) if isinstance(model, str) else NO_MODEL
