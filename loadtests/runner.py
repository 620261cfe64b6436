"""Runs each (scenario, peer) pair on fresh processes and collects one result per pair.

For every pair: start the upstream (fake pods, or a static nginx for the overhead runs) on the
load core, start the peer on the proxy core, warm up, measure with faults injected on time,
then stop everything by PID. Nothing is shared between pairs, so one peer's ejections or
hung connections cannot leak into the next one's numbers.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from loadtests import peers as peers_mod
from loadtests import procs, wrk
from loadtests.openloop import Event, Recording, Target, run_open_loop
from loadtests.peers import Backend, Budget, Peer
from loadtests.scenarios import Scenario
from loadtests.schedule import linear_ramp, poisson_arrivals, varying_arrivals
from loadtests.stats import Summary, all_requests_latencies


@dataclass
class RowResult:
    """One peer in one scenario; ``note`` says why a row has no numbers."""

    scenario: str
    peer: str
    summary: Summary | None = None
    ranked_latency_s: list[float] = field(default_factory=list)  # all requests, inf = failed
    lag_p99_s: float = 0.0
    behind_schedule: bool = False
    closed: wrk.WrkResult | None = None
    note: str = ""
    backend_per_request: float | None = None  # backend requests per client request (retries,
    # hedges): 1.05 means 5% extra load on the backends
    hedges: dict[str, float] = field(default_factory=dict)  # tailgate: sent, won, cancelled


@dataclass(frozen=True)
class Settings:
    duration_s: float = 20.0
    warmup_s: float = 2.0
    seed: int = 1
    proxy_cpus: str | None = "0"
    load_cpus: str | None = "1"
    budget: Budget = field(default_factory=Budget)
    client_timeout_s: float = 5.0
    log_dir: Path = Path("loadtests/results/logs")
    profile_dir: Path | None = None  # py-spy profiles of tailgate rows when set


def _run_async(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _post_control(port: int, change: Mapping[str, object]) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/_control",
        data=json.dumps(dict(change)).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=2.0) as resp:
        resp.read()


def _control_event(port: int, change: Mapping[str, object]) -> Callable[[], object]:
    async def send() -> None:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/_control"
            async with session.post(url, json=dict(change)) as resp:
                await resp.read()

    return send


class PairRun:
    """The processes of one (scenario, peer) pair; a context manager that stops them all."""

    def __init__(self, scenario: Scenario, peer: Peer, settings: Settings) -> None:
        self.scenario = scenario
        self.peer = peer
        self.settings = settings
        self.children: list[procs.Child] = []
        self.admin_port = 0  # a tailgate peer's admin listener, once started
        self.backends: list[Backend] = []
        self.run_dir = Path(tempfile.mkdtemp(prefix="tailgate-bench-"))
        self.log_dir = settings.log_dir / scenario.name / peer.label.replace(" ", "_")

    def __enter__(self) -> PairRun:
        return self

    def __exit__(self, *exc: object) -> None:
        procs.stop_all(self.children)
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _start(self, name: str, cmd: Sequence[str], cpus: str | None) -> procs.Child:
        child = procs.start(name, cmd, cpus, self.log_dir)
        self.children.append(child)
        return child

    def start_upstream(self) -> None:
        s = self.scenario
        cpus = self.settings.load_cpus
        if s.upstream == "static":
            port = procs.free_port()
            conf = self.run_dir / "upstream.conf"
            values = {"listen_port": port, "run_dir": str(self.run_dir)}
            conf.write_text(peers_mod.render_template("upstream-nginx.conf.tmpl", values))
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            cmd = [
                nginx,
                "-p",
                str(self.run_dir),
                "-e",
                str(self.run_dir / "u.log"),
                "-c",
                str(conf),
            ]
            self._start("upstream", cmd, cpus).wait_http(f"http://127.0.0.1:{port}/health")
            self.backends = [Backend("upstream", port)]
            return
        started = []
        ports = procs.free_ports(len(s.pods))
        for i, (pod, port) in enumerate(zip(s.pods, ports, strict=True)):
            cmd = [sys.executable, "-m", "loadtests.fakepod", "--port", str(port),
                   "--name", pod.name, "--slots", str(pod.slots),
                   "--service-ms", str(pod.service_ms), "--sigma", str(pod.sigma),
                   "--slow-factor", str(pod.slow_factor),
                   "--seed", str(self.settings.seed * 100 + i)]  # fmt: skip
            started.append((self._start(f"pod-{pod.name}", cmd, cpus), port, pod))
        for child, port, pod in started:
            child.wait_http(f"http://127.0.0.1:{port}/health")
            if pod.faults:
                _post_control(port, pod.faults)
            self.backends.append(Backend(pod.name, port))

    def start_peer(self) -> list[str]:
        """Start the peer; return the base URLs the load goes to."""
        if not self.peer.is_proxy:
            return [f"http://127.0.0.1:{b.port}" for b in self.backends]
        listen, admin = procs.free_ports(2)
        conf = self.run_dir / f"peer{peers_mod.config_suffix(self.peer.kind)}"
        text = peers_mod.render(
            self.peer, self.backends, listen, admin, self.run_dir, self.settings.budget
        )
        conf.write_text(text)
        (self.log_dir).mkdir(parents=True, exist_ok=True)
        (self.log_dir / conf.name).write_text(text)
        cmd = peers_mod.command(self.peer, conf, self.run_dir)
        if cmd is None:
            raise procs.StartError(f"{self.peer.kind} is not installed")
        child = self._start("peer", cmd, self.settings.proxy_cpus)
        child.wait_http(f"http://127.0.0.1:{listen}/health")
        self.peer_child = child
        self.admin_port = admin
        return [f"http://127.0.0.1:{listen}"]

    def profiler(self) -> procs.Child | None:
        out = self.settings.profile_dir
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if out is None or self.peer.kind != "tailgate" or not Path(spy).exists():
            return None
        out.mkdir(parents=True, exist_ok=True)
        name = f"{self.scenario.name}-{self.peer.label.replace(' ', '_')}.txt"
        cmd = [spy, "record", "--pid", str(self.peer_child.pid), "--format", "raw",
               "--rate", "250", "--nonblocking", "--subprocesses", "-o", str(out / name),
               "--duration", str(round(self.settings.duration_s))]  # fmt: skip
        return self._start("py-spy", cmd, self.settings.load_cpus)


def _arrivals(scenario: Scenario, duration_s: float, rng: random.Random) -> list[float]:
    if scenario.end_rate_rps is None:
        return poisson_arrivals(scenario.rate_rps, duration_s, rng)
    peak = max(scenario.rate_rps, scenario.end_rate_rps)
    ramp = linear_ramp(scenario.rate_rps, scenario.end_rate_rps, duration_s)
    return varying_arrivals(ramp, peak, duration_s, rng)


def _open_loop(pair: PairRun, urls: list[str], settings: Settings) -> RowResult:
    s = pair.scenario
    rng = random.Random(settings.seed)  # the same arrivals for every peer
    target = Target(urls, timeout_s=settings.client_timeout_s)
    spread_rng = random.Random(settings.seed + 1)
    spread = [spread_rng.randrange(len(urls)) for _ in range(100_000)]

    def pick(i: int) -> int:
        return spread[i % len(spread)]

    warm = poisson_arrivals(s.rate_rps, settings.warmup_s, rng)
    _run_async(run_open_loop(target, warm, settings.warmup_s, pick))
    arrivals = _arrivals(s, settings.duration_s, rng)
    events: list[Event] = [
        (f.at_fraction * settings.duration_s, _control_event(pair.backends[f.pod].port, f.change))
        for f in s.faults
    ]
    spy = pair.profiler()
    served_before = _served(pair.backends)
    rec: Recording = _run_async(run_open_loop(target, arrivals, settings.duration_s, pick, events))
    served = _served(pair.backends) - served_before
    hedges = _tailgate_hedges(pair.admin_port) if pair.peer.kind == "tailgate" else {}
    if spy is not None:
        spy.proc.wait(30)
    return RowResult(
        s.name,
        pair.peer.label,
        summary=rec.summary(),
        ranked_latency_s=all_requests_latencies(rec.latency_s, rec.ok),
        lag_p99_s=rec.lag_p99_s(),
        behind_schedule=rec.behind_schedule(),
        backend_per_request=served / len(arrivals) if arrivals and served >= 0 else None,
        hedges=hedges,
    )


def tailgate_counter(admin_port: int, sample: str, label: str) -> dict[str, float]:
    """One of tailgate's counters from its admin /metrics, summed by ``label``; empty when the
    admin port does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2.0) as r:
            text = r.read().decode()
    except OSError:
        return {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample:
                key = found.labels[label]
                counts[key] = counts.get(key, 0.0) + found.value
    return counts


def _tailgate_hedges(admin_port: int) -> dict[str, float]:
    """tailgate's hedge counters (warm-up included), from its admin /metrics."""
    return tailgate_counter(admin_port, "tailgate_hedges_total", "event")


def _served(backends: Sequence[Backend]) -> int:
    """Requests the fake pods have taken so far (each counted once it leaves, cancelled too);
    -1 when a pod does not say (the static upstream)."""
    total = 0
    for backend in backends:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{backend.port}/_stats", timeout=2.0
            ) as resp:
                total += int(json.loads(resp.read())["served"])
        except (OSError, ValueError, KeyError):
            return -1
    return total


def _closed_loop(pair: PairRun, urls: list[str], settings: Settings) -> RowResult:
    if shutil.which("wrk") is None:
        return RowResult(pair.scenario.name, pair.peer.label, note="wrk not installed")
    script = pair.run_dir / "post.lua"
    script.write_text(wrk.POST_SCRIPT)
    url = urls[0] + "/v1/completions"
    warm = wrk.command(url, str(script), 1)
    subprocess.run(procs.pinned(warm, settings.load_cpus), capture_output=True, timeout=30)
    spy = pair.profiler()
    cmd = procs.pinned(wrk.command(url, str(script), settings.duration_s), settings.load_cpus)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=settings.duration_s + 30)
    if spy is not None:
        spy.proc.wait(30)
    return RowResult(pair.scenario.name, pair.peer.label, closed=wrk.parse_output(done.stdout))


def run_pair(scenario: Scenario, peer: Peer, settings: Settings) -> RowResult:
    """Measure one peer in one scenario on fresh processes; failures become a note."""
    with PairRun(scenario, peer, settings) as pair:
        try:
            pair.start_upstream()
            urls = pair.start_peer()
        except procs.StartError as exc:
            first = str(exc).strip().splitlines()
            return RowResult(scenario.name, peer.label, note=f"not available: {first[-1][:120]}")
        if scenario.mode == "closed":
            return _closed_loop(pair, urls, settings)
        return _open_loop(pair, urls, settings)


def run_all(
    scenarios: Sequence[Scenario],
    peer_labels: Sequence[str] | None,
    settings: Settings,
    progress: Callable[[RowResult], None] = lambda r: None,
) -> list[RowResult]:
    results = []
    for scenario in scenarios:
        # --peers names the rows outright, so extra ones (e.g. another tailgate policy) can run
        for label in peer_labels if peer_labels is not None else scenario.peers:
            result = run_pair(scenario, peers_mod.PEERS[label], settings)
            progress(result)
            results.append(result)
    return results
