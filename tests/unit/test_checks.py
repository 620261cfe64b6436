"""The active checks' registry: which checks a ``health_check:`` section turns on."""

from __future__ import annotations

from gateway.checks import CHECKS, build_checks
from gateway.checks.generation import Generation
from gateway.checks.http_get import HttpGet
from gateway.config.model import HealthCheckConfig


def test_by_default_a_round_is_the_get_of_the_path_only() -> None:
    [check] = build_checks(HealthCheckConfig())
    assert isinstance(check, HttpGet)
    assert (check.path, check.timeout_s) == ("/ready", 1.0)


def test_a_generation_interval_adds_the_one_token_check() -> None:
    config = HealthCheckConfig(generation_interval=30.0, generation_model="m")
    http, generation = build_checks(config)
    assert isinstance(http, HttpGet) and isinstance(generation, Generation)
    assert (generation.interval_s, generation.model, generation.timeout_s) == (30.0, "m", 10.0)


def test_each_backend_gets_its_own_checks() -> None:
    """A check may keep per-backend state (the generation's cadence): never shared."""
    config = HealthCheckConfig(generation_interval=30.0)
    assert build_checks(config)[1] is not build_checks(config)[1]
    assert list(CHECKS) == ["http", "generation"]
