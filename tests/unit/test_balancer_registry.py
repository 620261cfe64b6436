"""POLICIES and build_policy: every policy is built from the `balancer:` section itself."""

import random
from pathlib import Path

import pytest

from gateway.balancer import POLICIES, SimpleCandidate, build_policy
from gateway.config import ConfigError, parse_config
from gateway.config.model import BalancerConfig, PrefixConfig

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
    policy = build_policy(BalancerConfig(policy=name))
    assert policy.name == name
    fleet = [SimpleCandidate.new(f"b{i}", now=0.0) for i in range(3)]
    policy.refresh(fleet, 0.0)
    assert policy.pick(fleet, 0.0, random.Random(0)) in fleet
    score = policy.score(fleet[0], 0.0)
    assert (score is None) == (name in ("round_robin", "random"))


def test_each_build_is_a_fresh_object() -> None:
    config = BalancerConfig()
    assert build_policy(config) is not build_policy(config)


def test_the_section_carries_through() -> None:
    policy = build_policy(
        BalancerConfig(policy="weighted_score", alpha=1.0, beta=0.0, selection="best")
    )
    assert (policy.alpha, policy.beta, policy.selection) == (1.0, 0.0, "best")
    prefix = PrefixConfig(capacity_blocks=7, load_bound=0.5, session_affinity=True)
    aware = build_policy(BalancerConfig(policy="prefix_aware", prefix=prefix))
    assert (aware.index.capacity_blocks, aware.load_bound, aware.session_affinity) == (7, 0.5, True)


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("selection: all", "balancer.selection: must be one of best, p2c"),
        ("alpha: -0.1", "balancer.alpha: must not be negative"),
        ("{alpha: 0, beta: 0}", "balancer: balancer.alpha and balancer.beta must not both be 0"),
        ("default_latency: 0", "balancer.default_latency: must be greater than 0"),
        ("prefix: {capacity_blocks: 0}", "balancer.prefix.capacity_blocks: must be greater"),
    ],
)
def test_the_section_validates_once_naming_the_field(yaml: str, message: str) -> None:
    body = yaml if yaml.startswith("{") else "{" + yaml + "}"
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_config(f"backends: [{{url: 'http://a:1'}}]\nbalancer: {body}\n")
