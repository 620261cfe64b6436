"""Config validation: every problem is reported with its field path and reason."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, default_config_text, parse_config
from gateway.config.model import GatewayConfig
from gateway.config.units import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        (3, 3.0),
        (0.5, 0.5),
        ("1.5s", 1.5),
    ],
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["10 parsecs", "-1s", True, [], "s"])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(raw)


@pytest.mark.parametrize(
    ("raw", "size"), [("16MiB", 16 << 20), ("64KiB", 65536), ("1KB", 1000), (4096, 4096)]
)
def test_sizes(raw: object, size: int) -> None:
    assert parse_size(raw) == size


def test_defaults_match_the_documented_ones() -> None:
    config = parse_config("backends: [{url: 'http://127.0.0.1:8001'}]")
    assert (config.balancer.policy, config.balancer.alpha, config.balancer.beta) == (
        "prefix_aware",
        0.6,
        0.4,
    )
    od = config.outlier_detection
    assert (od.consecutive_5xx, od.consecutive_gateway_failure, od.interval) == (5, 5, 10.0)
    assert config.open_duration_s == 30.0
    assert (
        config.circuit_breaker.failure_threshold,
        config.circuit_breaker.half_open_requests,
    ) == (5, 1)
    assert config.backends[0].display_name == "127.0.0.1:8001"


def test_every_problem_is_reported_with_its_path() -> None:
    found = problems(
        """
listen: {port: 70000}
backends:
  - url: ftp://somewhere
  - {url: "http://a:1", weight: 0}
balancer: {policy: fastest, alpha: lots}
timeouts: {connect: 3 fortnights}
retries: {retry_on: [reset, 404]}
colour: blue
"""
    )
    text = "\n".join(found)
    assert "listen.port: port 70000 is out of range" in text
    assert "backends[0].url: URL 'ftp://somewhere' must start with http:// or https://" in text
    assert "backends[1].weight: must be greater than 0" in text
    assert "balancer.policy: must be one of" in text
    assert "balancer.alpha: expected a number" in text
    assert "timeouts.connect: expected a duration" in text
    assert "retries.retry_on: unknown retry condition 404" in text
    assert "colour: unknown key" in text


def test_typo_gets_a_suggestion() -> None:
    assert any(
        "did you mean 'balancer'" in p
        for p in problems("balancr: {}\nbackends: [{url: 'http://a:1'}]")
    )


def test_cross_field_rules() -> None:
    found = "\n".join(
        problems(
            """
backends:
  - {url: "http://a:1", group: stable}
  - {url: "http://A:1"}
timeouts: {per_try: 10s, total: 5s}
routes:
  - groups: [{name: canary, weight: 10}]
circuit_breaker: {recovery_time: 10s}
outlier_detection: {base_ejection_time: 20s}
"""
        )
    )
    assert "backends[1].url: duplicate of backends[0].url" in found
    assert "timeouts.per_try: must not exceed timeouts.total" in found
    assert "routes[0].groups[0].name: no backend is in group 'canary'" in found
    assert (
        "circuit_breaker.recovery_time: differs from outlier_detection.base_ejection_time" in found
    )


def test_no_backends_is_an_error() -> None:
    assert any(p.startswith("backends:") for p in problems("listen: {port: 8080}"))


def test_bad_yaml_names_the_line() -> None:
    found = problems("backends: [\n  {url: 'http://a:1'\n")
    assert found[0].startswith("<yaml line")


def test_a_key_given_twice_is_an_error_not_a_silent_override() -> None:
    text = (
        "backends: [{url: 'http://a:1'}]\n"
        "health_check: {enabled: false}\n"
        "retries: {attempts: 2}\n"
        "health_check: {enabled: true}\n"
    )
    assert problems(text) == [
        "<yaml line 4, column 1>: not valid YAML: duplicate key 'health_check' "
        "(first given on line 2)"
    ]


def test_a_merge_key_may_still_be_overridden() -> None:
    text = (
        "backends: [{url: 'http://a:1'}]\n"
        "listen: &common {host: 127.0.0.1, port: 8080}\n"
        "admin: {<<: *common, port: 9090}\n"
    )
    config = parse_config(text)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9090)


def test_embedded_default_is_valid_and_matches_config_dir() -> None:
    parse_config(default_config_text())
    assert (ROOT / "config" / "gateway.yaml").read_text() == default_config_text()


def test_one_set_of_defaults_the_embedded_config_is_the_built_in_one() -> None:
    """Apart from the local backends it names, the embedded config sets nothing that differs
    from the dataclass defaults: a user with no settings gets what `tailgate up` runs."""
    embedded = parse_config(default_config_text())
    built_in = GatewayConfig()
    assert embedded.backends
    # base_ejection_time left unset means "the shared open duration's default": the same 30 s
    assert embedded.open_duration_s == built_in.open_duration_s
    unset = dataclasses.replace(embedded.outlier_detection, base_ejection_time=None)
    assert dataclasses.replace(embedded, backends=(), outlier_detection=unset) == built_in


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("backends: [{url: 'http://127.0.0.1:8001'}]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [{url: 'http://127.0.0.1:8001', weight: -2}]\nlisten: {port: x}\n")
    run = [sys.executable, "-m", "gateway", "check-config"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=30)
    assert failed.returncode == 2
    assert "backends[0].weight: must be greater than 0" in failed.stderr
    assert "listen.port: expected a port number" in failed.stderr


def test_serve_refuses_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: []\nbalancer: {policy: nope}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "balancer.policy" in result.stderr


def test_readme_configuration_reference_names_only_real_keys() -> None:
    """The README's "every key with its default" block must stay loadable."""
    import yaml

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```yaml", readme.index("## Configuration")) + len("```yaml")
    reference = yaml.safe_load(readme[start : readme.index("```", start)])
    reference.pop("discovery")  # shown beside `backends:`; a config has one or the other
    reference["backends"] += [
        {"url": "http://127.0.0.1:8101", "group": "stable"},
        {"url": "http://127.0.0.1:8102", "group": "canary"},
    ]
    parse_config(yaml.safe_dump(reference))


def test_slo_and_tracing_sections_are_validated_with_their_paths() -> None:
    text = (
        "backends: [{url: 'http://127.0.0.1:8001'}]\n"
        "slo: {ttft: -1s}\n"
        "tracing: {otlp: {endpoint: 'ftp://collector'}, sampled: true}\n"
    )
    found = problems(text)
    assert any(p.startswith("slo.ttft:") for p in found)
    assert any(p.startswith("tracing.otlp.endpoint:") for p in found)
    assert any(p.startswith("tracing.sampled: unknown key") for p in found)
    config = parse_config(
        "backends: [{url: 'http://127.0.0.1:8001'}]\n"
        "slo: {ttft: 1s, tpot: 0}\n"
        "tracing: {otlp: {endpoint: 'http://127.0.0.1:4318/v1/traces', headers: {x-key: k}}}\n"
    )
    assert (config.slo.ttft, config.slo.tpot) == (1.0, 0.0)
    assert config.tracing.otlp.headers == {"x-key": "k"}


@pytest.mark.parametrize("token", ['""', "'   '"])
def test_an_empty_admin_token_is_an_error_not_auth_turned_off(token: str) -> None:
    found = "\n".join(problems(f"backends: [{{url: 'http://a:1'}}]\nadmin: {{token: {token}}}"))
    assert "admin.token must not be empty" in found


def test_trusted_proxies_are_networks() -> None:
    config = parse_config(
        "backends: [{url: 'http://a:1'}]\nheaders: {trusted_proxies: [10.0.0.0/8, '::1']}"
    )
    assert [str(n) for n in config.headers.trusted_proxies] == ["10.0.0.0/8", "::1/128"]
    found = "\n".join(problems("backends: [{url: 'http://a:1'}]\nheaders: {trusted_proxies: [x]}"))
    assert "headers.trusted_proxies" in found


def test_body_deadlines_default_to_a_few_seconds_between_bytes_bounded_in_total() -> None:
    timeouts = parse_config("backends: [{url: 'http://a:1'}]").timeouts
    assert (timeouts.request_body_idle, timeouts.request_body) == (5.0, 30.0)
