from pathlib import Path

import pytest
import yaml

from gateway.config import GatewayConfig, parse_config
from loadtests.peers import PEERS, Backend, Budget, command, render

BACKENDS = [Backend("a", 18001), Backend("b", 18002)]
BUDGET = Budget(connect_s=0.5, per_try_s=1.5, total_s=4.0, retries=1, ejection_s=10.0)


def _render(label: str) -> str:
    return render(PEERS[label], BACKENDS, 18080, 18081, Path("/tmp/run"), BUDGET)


def test_tailgate_config_is_valid_and_carries_the_budget() -> None:
    config = parse_config(_render("tailgate weighted_score"))
    assert config.listen.port == 18080
    assert [b.url for b in config.backends] == ["http://127.0.0.1:18001", "http://127.0.0.1:18002"]
    assert config.timeouts.per_try == 1.5 and config.timeouts.total == 4.0
    assert config.retries.attempts == 2 and not config.retries.retry_non_idempotent  # as shipped
    assert config.hedging == GatewayConfig().hedging
    assert config.logging.access_log is False
    assert config.balancer.policy == "weighted_score"


def test_envoy_config_has_policy_retry_and_ejection() -> None:
    doc = yaml.safe_load(_render("envoy round_robin"))
    cluster = doc["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "ROUND_ROBIN"
    assert cluster["connect_timeout"] == "0.5s"
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert ports == [18001, 18002]
    assert cluster["outlier_detection"]["base_ejection_time"] == "10s"
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert route["retry_policy"]["num_retries"] == 1
    assert route["retry_policy"]["per_try_timeout"] == "1.5s"
    assert route["timeout"] == "4s"


def test_nginx_and_haproxy_spell_the_same_budget() -> None:
    nginx = _render("nginx random two least_conn")
    assert "random two least_conn;" in nginx
    assert "server 127.0.0.1:18002 max_fails=5 fail_timeout=10s;" in nginx
    assert "proxy_read_timeout 1500ms;" in nginx and "proxy_next_upstream_tries 2;" in nginx
    haproxy = _render("haproxy leastconn")
    assert "balance leastconn" in haproxy and "retries 1" in haproxy
    assert "timeout server 1500ms" in haproxy
    assert "server b 127.0.0.1:18002 check" in haproxy


@pytest.mark.parametrize("label", [p for p in PEERS if PEERS[p].is_proxy])
def test_every_proxy_renders_without_leftover_placeholders(label: str) -> None:
    assert "$" not in _render(label)


def test_tailgate_command_passes_workers() -> None:
    cmd = command(PEERS["tailgate weighted_score --workers 2"], Path("c.yaml"), Path("/tmp"))
    assert cmd is not None and cmd[-2:] == ["--workers", "2"]


def test_sglang_router_gets_every_threshold_and_the_budget() -> None:
    from loadtests.llm.runner import LLM_PEERS

    args = render(LLM_PEERS["sglang cache_aware"], BACKENDS, 18080, 18081, Path("/tmp/r"), BUDGET)
    assert "--policy cache_aware" in args
    assert "--worker-urls http://127.0.0.1:18001 http://127.0.0.1:18002" in args
    for flag in ("--cache-threshold", "--balance-abs-threshold", "--balance-rel-threshold",
                 "--eviction-interval-secs", "--max-tree-size"):  # fmt: skip
        assert flag in args
    assert "--retry-max-retries 2" in args  # SGLang counts the first try as one
    assert "--request-timeout-secs 4" in args and "$" not in args


def test_tailgate_overrides_merge_into_the_rendered_config() -> None:
    from loadtests.llm.runner import tailgate_peer

    peer = tailgate_peer("least_request", "balancer: {selection: best}\nretries: {attempts: 3}")
    config = parse_config(render(peer, BACKENDS, 18080, 18081, Path("/tmp/run"), BUDGET))
    assert config.balancer.policy == "least_request"  # kept from the template
    assert config.balancer.selection == "best" and config.retries.attempts == 3
    assert config.timeouts.per_try == 1.5  # untouched sections stay
