"""Active health checks: one module per kind of probe, one entry in :data:`CHECKS`.

Each entry builds its check for one backend from the ``health_check:`` section, or returns
None where that section leaves it off. Every probe round runs each check built and passes only
if all pass; :class:`gateway.health.ActiveCheckState` turns the rounds into a verdict
(``unhealthy_threshold`` / ``healthy_threshold``) and :class:`gateway.probes.Prober` runs the
rounds every ``health_check.interval``.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.checks import generation, http_get
from gateway.checks.base import ActiveCheck
from gateway.config.model import HealthCheckConfig

CHECKS: dict[str, Callable[[HealthCheckConfig], ActiveCheck | None]] = {
    "http": http_get.build,
    "generation": generation.build,
}


def build_checks(config: HealthCheckConfig) -> list[ActiveCheck]:
    """The checks ``config`` turns on, for one backend, in registry order."""
    return [check for build in CHECKS.values() if (check := build(config)) is not None]


__all__ = ["CHECKS", "ActiveCheck", "build_checks"]
