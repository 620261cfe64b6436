"""The event loop: arrivals, tries, completions, timeouts and the gateways' upkeep on one heap.

Virtual time only; nothing sleeps. Per request the loop allocates one `Request` holding the
gateway's own `Exchange`, one `_Try` per try and the gateway's own `Attempt`; completions, grants
from the gateway's pending queue and queue deadlines are heap entries. Arrivals are not put on the
heap (the next one is compared with the heap's top), and per-try timeouts need no heap entries:
every try gets the same ``per_try`` timeout, so deadlines arrive in the order tries were sent
and a FIFO of pending tries, checked at its head, fires them in time order.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from gateway.attempt import Attempt
from gateway.config.model import GatewayConfig
from gateway.endpoint import Endpoint
from gateway.exchange import Exchange, RetryVerdict
from gateway.failures import Failure
from loadtests.simulate.arrivals import arrivals
from loadtests.simulate.pods import Pod, has_fault
from loadtests.simulate.replica import GatewayReplica, pod_name, simulated_config
from loadtests.simulate.scenarios import Scenario

POLICY_REFRESH_S = 0.25  # gateway.maintenance.POLICY_REFRESH_S
HERDING_SAMPLES = 2000

_QUEUED, _RUNNING, _DONE = 0, 1, 2
(_COMPLETE, _RETRY, _GRANT, _QUEUE_DEADLINE, _HEDGE) = range(5)
(_TICK, _SWEEP, _PROBE, _SCRAPE, _DELIVER, _FAULT) = range(5, 11)
_INF = math.inf


@dataclass(frozen=True)
class PolicyChoice:
    """A balancer setting to simulate; `label` names it in reports."""

    policy: str
    selection: str = "p2c"

    @property
    def label(self) -> str:
        if self.policy == "weighted_score":
            return f"weighted_score/{self.selection}"
        return self.policy


@dataclass
class RunResult:
    """What one simulated run measured; latencies (seconds) are of successful requests."""

    label: str
    scenario: str
    replicas: int
    backends: int
    requests: int
    latencies_s: list[float]
    failed: int
    tries_per_pod: list[int]
    herding_cov: float
    duration_s: float
    events: int = 0
    wall_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput_rps(self) -> float:
        return self.succeeded / self.duration_s if self.duration_s > 0 else 0.0


class Request:
    __slots__ = ("arrival_s", "exchange", "live", "replica", "size")

    def __init__(
        self, arrival_s: float, size: float, replica: GatewayReplica, exchange: Exchange
    ) -> None:
        self.arrival_s = arrival_s
        self.size = size
        self.replica = replica
        self.exchange = exchange  # the gateway's own core for this request
        self.live: list[_Try] = []  # tries in flight: two while a hedge races its try


class _Try:
    __slots__ = ("attempt", "deadline_s", "is_hedge", "pod", "request", "state")

    def __init__(self, request: Request, attempt: Attempt, pod: Pod) -> None:
        self.request = request
        self.attempt = attempt
        self.pod = pod
        self.state = _QUEUED
        self.deadline_s = _INF
        self.is_hedge = False


class Simulation:
    """G replicas of the gateway in front of the scenario's pods, for one policy."""

    def __init__(
        self,
        scenario: Scenario,
        choice: PolicyChoice,
        replicas: int,
        requests: int,
        seed: int = 1,
        gateway: GatewayConfig | None = None,
    ) -> None:
        if replicas < 1 or requests < 1:
            raise ValueError("replicas and requests must be >= 1")
        self.scenario = scenario
        self.choice = choice
        self.requests = requests
        self.seed = seed
        self.now = 0.0
        config = simulated_config(
            gateway or GatewayConfig(),
            scenario.pods,
            policy=choice.policy,
            selection=choice.selection,
        )
        self.config = config
        self.pods = [Pod(i, spec) for i, spec in enumerate(scenario.pods)]
        self._pod_of = {pod_name(i): pod for i, pod in enumerate(self.pods)}
        self.replicas = [
            GatewayReplica(i, config, self.clock, random.Random(seed * 1_000_003 + i))
            for i in range(replicas)
        ]
        self._rng = random.Random(seed ^ 0xFA17)  # pods' error draws; phases of upkeep
        self._heap: list[tuple[float, int, int, object]] = []
        self._seq = itertools.count()
        self._timeouts: deque[_Try] = deque()
        self._per_try_s = config.timeouts.per_try
        self._outstanding = 0
        self._arrivals_left = requests
        self._latencies: list[float] = []
        self._failed = 0
        self._tries = [0] * len(self.pods)
        self._hedges = 0
        self._hedges_won = 0
        self._herding_sum = 0.0
        self._herding_n = 0
        self._last_finish = 0.0
        self._events = 0

    def clock(self) -> float:
        """The gateway code's clock: the simulation's virtual time in seconds."""
        return self.now

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = time.perf_counter()
        self._schedule_upkeep()
        stream = arrivals(self.scenario, self.requests, len(self.replicas), self.seed)
        heap = self._heap
        timeouts = self._timeouts
        pop = heapq.heappop
        stride = max(1, self.requests // HERDING_SAMPLES)
        nxt = next(stream, None)
        count = 0
        events = 0
        while nxt is not None or self._outstanding:
            while timeouts and timeouts[0].state == _DONE:
                timeouts.popleft()
            t_timeout = timeouts[0].deadline_s if timeouts else _INF
            t_arrival = nxt[0] if nxt is not None else _INF
            t_event = heap[0][0] if heap else _INF
            events += 1
            if t_timeout <= t_arrival and t_timeout <= t_event:
                if t_timeout == _INF:
                    break
                self.now = t_timeout
                self._timeout(timeouts.popleft())
            elif t_arrival <= t_event:
                arrival_s, size, replica = nxt  # type: ignore[misc]
                self.now = arrival_s
                count += 1
                if count % stride == 0:
                    self._sample_herding()
                self._arrive(size, self.replicas[replica])
                nxt = next(stream, None)
            else:
                when, _, kind, payload = pop(heap)
                self.now = when
                if kind == _COMPLETE:
                    self._complete(payload)  # type: ignore[arg-type]
                elif kind == _RETRY:
                    self._send(payload)  # type: ignore[arg-type]
                elif kind == _GRANT:
                    self._granted(*payload)  # type: ignore[misc]
                elif kind == _QUEUE_DEADLINE:
                    self._queue_deadline(payload)  # type: ignore[arg-type]
                elif kind == _HEDGE:
                    self._hedge(payload)  # type: ignore[arg-type]
                else:
                    self._upkeep(kind, payload)
        return RunResult(
            label=self.choice.label,
            scenario=self.scenario.name,
            replicas=len(self.replicas),
            backends=len(self.pods),
            requests=self.requests,
            latencies_s=self._latencies,
            failed=self._failed,
            tries_per_pod=self._tries,
            herding_cov=self._herding_sum / self._herding_n if self._herding_n else 0.0,
            duration_s=self._last_finish,
            events=events - 1,
            wall_s=time.perf_counter() - started,
            extra={"hedges": self._hedges, "hedges_won": self._hedges_won},
        )

    def _push(self, when: float, kind: int, payload: object) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, payload))

    # -- requests -------------------------------------------------------------------------------

    def _arrive(self, size: float, replica: GatewayReplica) -> None:
        self._arrivals_left -= 1
        self._outstanding += 1
        self._send(Request(self.now, size, replica, replica.open(self.now)))

    def _send(self, request: Request) -> None:
        """One try: the gateway's core admits it (a backend now, shed, or queued)."""
        exchange = request.exchange
        granted = exchange.admit(self.now)
        if granted is None:  # queued, as the handler would wait: the grant comes as an event
            exchange.ticket.on_grant = lambda result: self._push(
                self.now, _GRANT, (request, result)
            )
            self._push(exchange.ticket.deadline, _QUEUE_DEADLINE, request)
            return
        self._granted(request, granted)

    def _queue_deadline(self, request: Request) -> None:
        if request.exchange.give_up_waiting() is not None:
            self._finish(request, ok=False)  # shed: 503 from the gateway itself

    def _granted(self, request: Request, granted: Endpoint | Failure) -> None:
        """The gateway enters an Attempt at its backend and the pod takes the request."""
        if isinstance(granted, Failure):
            self._finish(request, ok=False)  # shed: 503 from the gateway itself
            return
        attempt = self._begin_try(request, granted)
        delay_s = request.exchange.hedge_delay_s(False, True)
        if delay_s is not None:  # the gateway's own rule: hedge if no answer by then
            self._push(self.now + delay_s, _HEDGE, attempt)
        self._enter_pod(attempt)

    def _begin_try(self, request: Request, granted: Endpoint) -> _Try:
        pod = self._pod_of[granted.name]
        self._tries[pod.index] += 1
        attempt = _Try(request, request.exchange.start_try(granted), pod)
        attempt.attempt.begin()
        request.live.append(attempt)
        return attempt

    def _hedge(self, first: _Try) -> None:
        """The hedge delay passed: the core says whether (and where) a hedge goes."""
        request = first.request
        if first.state == _DONE or len(request.live) != 1:
            return  # answered, or already hedged
        granted = request.exchange.hedge(self.now)
        if granted is None:
            return
        self._hedges += 1
        hedge = self._begin_try(request, granted)
        hedge.is_hedge = True
        self._enter_pod(hedge)

    def _cancel(self, loser: _Try, failure: Failure) -> None:
        """The other try answered first: the gateway closes this one and the pod frees it."""
        was = loser.state
        loser.state = _DONE
        pod = loser.pod
        if was == _QUEUED:
            pod.queued -= 1
        else:
            self._release(pod)
        loser.attempt.failed(failure)
        loser.attempt.end()

    def _enter_pod(self, attempt: _Try) -> None:
        pod = attempt.pod
        if pod.faulty and pod.spec.down:
            attempt.attempt.failed(Failure.CONNECT)
            self._end_try(attempt, Failure.CONNECT, ok=False)
            return
        if pod.queued >= pod.spec.max_queue:
            self._respond(attempt, 503)  # fakepod: queue full
            return
        attempt.deadline_s = self.now + self._per_try_s
        self._timeouts.append(attempt)
        if pod.busy < pod.spec.slots:
            self._start(attempt)
        else:
            pod.queue.append(attempt)
            pod.queued += 1

    def _start(self, attempt: _Try) -> None:
        pod = attempt.pod
        pod.busy += 1
        attempt.state = _RUNNING
        service_s = pod.service_s(attempt.request.size, self.now)
        if service_s != _INF:  # a hung pod answers only by the client's timeout
            self._push(self.now + service_s, _COMPLETE, attempt)

    def _release(self, pod: Pod) -> None:
        """A slot frees: the longest-waiting live request takes it."""
        pod.busy -= 1
        queue = pod.queue
        while queue:
            waiting = queue.popleft()
            if waiting.state == _QUEUED:
                pod.queued -= 1
                self._start(waiting)
                return

    def _complete(self, attempt: _Try) -> None:
        if attempt.state == _DONE:
            return  # timed out earlier; the slot was freed then
        attempt.state = _DONE
        pod = attempt.pod
        pod.served += 1
        spec = pod.spec
        failed = pod.faulty and spec.error_rate > 0 and self._rng.random() < spec.error_rate
        self._release(pod)
        self._respond(attempt, spec.error_status if failed else 200)

    def _respond(self, attempt: _Try, status: int) -> None:
        """Response headers (and, not streaming, the whole body) reach the gateway now."""
        attempt.state = _DONE
        reported = str(attempt.pod.depth()) if self.scenario.header_depth else None
        attempt.attempt.got_headers(status, False, reported)
        self._end_try(attempt, status, ok=status < 500)

    def _timeout(self, attempt: _Try) -> None:
        """``timeouts.per_try`` elapsed: the gateway gives up and the pod frees the slot."""
        was = attempt.state
        attempt.state = _DONE
        pod = attempt.pod
        if was == _QUEUED:
            pod.queued -= 1
        else:
            self._release(pod)
        attempt.attempt.failed(Failure.TIMEOUT)
        self._end_try(attempt, Failure.TIMEOUT, ok=False)

    def _end_try(self, attempt: _Try, what: Failure | int, *, ok: bool) -> None:
        """Ask the core about a retry (inside the Attempt, as the handler does), then leave it.

        The simulated requests are inference POSTs with a buffered (replayable) body."""
        request = attempt.request
        exchange = request.exchange
        request.live.remove(attempt)
        if request.live:  # a hedge race: a failure waits for the other try, a success wins
            if not ok:
                attempt.attempt.end()
                return
            for loser in request.live:
                outrun = attempt.is_hedge and not loser.is_hedge
                self._cancel(loser, Failure.OUTRUN if outrun else Failure.HEDGE_LOST)
            self._hedges_won += attempt.is_hedge
            request.live.clear()
            attempt.attempt.end()
            self._finish(request, ok)
            return
        retry = not ok and exchange.retry(what, True, self.now) is RetryVerdict.RETRY
        attempt.attempt.end()
        if retry:
            backoff_s = exchange.backoff_s(request.replica.runtime.rng)
            self._push(self.now + backoff_s, _RETRY, request)
        else:
            self._finish(request, ok)

    def _finish(self, request: Request, ok: bool) -> None:
        self._outstanding -= 1
        self._last_finish = self.now
        if ok:
            self._latencies.append(self.now - request.arrival_s)
        else:
            self._failed += 1

    def _sample_herding(self) -> None:
        """Coefficient of variation of requests held per unit of weight across pods, now."""
        loads = [p.depth() / p.spec.weight for p in self.pods]
        mean = sum(loads) / len(loads)
        if mean <= 0:
            return
        variance = sum((x - mean) ** 2 for x in loads) / len(loads)
        self._herding_sum += math.sqrt(variance) / mean
        self._herding_n += 1

    # -- upkeep ---------------------------------------------------------------------------------

    def _schedule_upkeep(self) -> None:
        """Each replica's periodic tasks at its own random phase, as independent processes."""
        cfg = self.config
        uniform = self._rng.uniform
        for replica in self.replicas:
            self._push(uniform(0, POLICY_REFRESH_S), _TICK, replica)
            if cfg.outlier_detection.enabled:
                self._push(uniform(0, cfg.outlier_detection.interval), _SWEEP, replica)
            if cfg.health_check.enabled:  # first probe as ActiveCheckState.first_delay_s
                first_s = cfg.health_check.interval * cfg.health_check.jitter_percent / 100
                self._push(uniform(0, first_s), _PROBE, replica)
        if self.scenario.scrape_interval_s > 0:
            self._push(uniform(0, self.scenario.scrape_interval_s), _SCRAPE, None)
        fault_s = self.scenario.fault_from_s
        if fault_s > 0:
            self._push(fault_s, _FAULT, None)

    def _upkeep(self, kind: int, payload: object) -> None:
        running = self._outstanding > 0 or self._arrivals_left > 0
        now = self.now
        cfg = self.config
        if kind == _TICK:
            payload.refresh()  # type: ignore[attr-defined]
            if running:
                self._push(now + POLICY_REFRESH_S, _TICK, payload)
        elif kind == _SWEEP:
            payload.sweep(now)  # type: ignore[attr-defined]
            if running:
                self._push(now + cfg.outlier_detection.interval, _SWEEP, payload)
        elif kind == _PROBE:
            payload.probe([p.ready() for p in self.pods], now)  # type: ignore[attr-defined]
            if running:
                self._push(now + cfg.health_check.interval, _PROBE, payload)
        elif kind == _SCRAPE:
            depths = [float(p.depth()) for p in self.pods]
            self._push(now + self.scenario.scrape_delay_s, _DELIVER, depths)
            if running:
                self._push(now + self.scenario.scrape_interval_s, _SCRAPE, None)
        elif kind == _DELIVER:
            for replica in self.replicas:
                replica.report_depths(payload, now)  # type: ignore[arg-type]
        elif kind == _FAULT:
            for pod in self.pods:
                pod.faulty = has_fault(pod.spec) and pod.spec.fault_from_s <= now


def simulate(
    scenario: Scenario,
    choice: PolicyChoice,
    replicas: int,
    requests: int,
    seed: int = 1,
    gateway: GatewayConfig | None = None,
) -> RunResult:
    """Run one policy on one scenario; the same `seed` gives every policy the same arrivals."""
    return Simulation(scenario, choice, replicas, requests, seed, gateway).run()
