"""build_policy and BalancerSettings: the names the config layer uses."""

import random
from pathlib import Path

import pytest

from gateway.balancer import POLICIES, BalancerSettings, SimpleCandidate, build_policy
from gateway.config import ConfigError, parse_config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
POLICY_NAMES = tuple(POLICIES)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_the_config_accepts_every_registered_policy_and_the_readme_documents_it(
    name: str,
) -> None:
    config = parse_config(f"backends: [{{url: 'http://a:1'}}]\nbalancer: {{policy: {name}}}\n")
    assert config.balancer.policy == name
    assert f"`{name}`" in README


def test_an_unregistered_policy_is_a_config_error_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"balancer\.policy: must be one of"):
        parse_config("backends: [{url: 'http://a:1'}]\nbalancer: {policy: fastest}\n")


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_builds_and_picks(name: str) -> None:
    policy = build_policy(BalancerSettings(policy=name))
    assert policy.name == name
    fleet = [SimpleCandidate.new(f"b{i}", now=0.0) for i in range(3)]
    policy.refresh(fleet, 0.0)
    assert policy.pick(fleet, 0.0, random.Random(0)) in fleet
    score = policy.score(fleet[0], 0.0)
    assert (score is None) == (name in ("round_robin", "random"))


def test_each_build_is_a_fresh_object() -> None:
    settings = BalancerSettings()
    assert build_policy(settings) is not build_policy(settings)


def test_settings_carry_through() -> None:
    policy = build_policy(BalancerSettings(alpha=1.0, beta=0.0, selection="best"))
    assert (policy.alpha, policy.beta, policy.selection) == (1.0, 0.0, "best")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"selection": "all"}, "balancer.selection"),
        ({"alpha": -0.1}, "balancer.alpha"),
        ({"alpha": 0.0, "beta": 0.0}, "balancer.alpha"),
        ({"default_latency_s": 0.0}, "balancer.default_latency_s"),
    ],
)
def test_invalid_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BalancerSettings(**kwargs)


def test_building_an_unregistered_policy_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"balancer\.policy"):
        build_policy(BalancerSettings(policy="fastest"))
