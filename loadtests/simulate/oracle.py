"""The oracle: each arrival goes to the pod where it would finish first, known exactly.

With perfect, instant knowledge of every pod (when each of its slots frees, its speed, its
pause schedule, which pods fail) and of the request's own demand, each request in arrival order
is sent to the pod that completes it earliest. It is greedy, not a proven lower bound (holding
a fast pod free for a later long request can beat it), but no real balancer knows as much, so
it is the reference every policy is reported against.

Pods alike in speed and pause schedule form a class; within a class the pod whose earliest
slot frees first is the best, so a pick is one heap top per class: O(classes + log M).
"""

from __future__ import annotations

import heapq
import math

from loadtests.simulate.arrivals import arrivals
from loadtests.simulate.engine import RunResult
from loadtests.simulate.pods import pause_left_s
from loadtests.simulate.scenarios import PodSpec, Scenario


def _speed(spec: PodSpec, faulty: bool) -> float:
    return spec.service_s * (spec.slow_factor if faulty else 1.0)


class _Classes:
    """The usable pods grouped by (seconds per unit demand, pause schedule)."""

    def __init__(self, pods: tuple[PodSpec, ...], slots_free: list[list[float]], now: float):
        self.keys: list[tuple[float, PodSpec]] = []
        self.heaps: list[list[tuple[float, int]]] = []
        index: dict[tuple[float, float, float, bool], int] = {}
        for i, spec in enumerate(pods):
            faulty = spec.fault_from_s <= now
            if faulty and spec.fails:
                continue
            pausing = faulty and spec.pause_every_s > 0 and spec.pause_for_s > 0
            key = (_speed(spec, faulty), spec.pause_every_s, spec.pause_for_s, pausing)
            if key not in index:
                index[key] = len(self.keys)
                self.keys.append((key[0], spec if pausing else PodSpec()))
                self.heaps.append([])
            self.heaps[index[key]].append((slots_free[i][0], i))
        for heap in self.heaps:
            heapq.heapify(heap)


def oracle(scenario: Scenario, requests: int, replicas: int, seed: int = 1) -> RunResult:
    """The oracle's run on the arrivals `simulate` gives every policy for the same seed."""
    pods = scenario.pods
    slots_free = [[0.0] * spec.slots for spec in pods]  # per pod: a heap of slot-free times
    fault_s = scenario.fault_from_s
    classes = _Classes(pods, slots_free, 0.0)
    switched = fault_s <= 0
    latencies: list[float] = []
    tries = [0] * len(pods)
    failed = 0
    last = 0.0
    for now, size, _ in arrivals(scenario, requests, replicas, seed):
        if not switched and now >= fault_s:
            classes = _Classes(pods, slots_free, now)
            switched = True
        best_end = math.inf
        best_class = -1
        for k, (speed, pause_spec) in enumerate(classes.keys):
            heap = classes.heaps[k]
            if not heap:
                continue
            start = max(now, heap[0][0])
            start += pause_left_s(pause_spec, start)
            end = start + size * speed
            if end < best_end:
                best_end, best_class = end, k
        if best_class < 0:
            failed += 1
            continue
        heap = classes.heaps[best_class]
        pod = heap[0][1]
        heapq.heapreplace(slots_free[pod], best_end)
        heapq.heapreplace(heap, (slots_free[pod][0], pod))
        tries[pod] += 1
        latencies.append(best_end - now)
        last = max(last, best_end)
    return RunResult(
        label="oracle",
        scenario=scenario.name,
        replicas=replicas,
        backends=len(pods),
        requests=requests,
        latencies_s=latencies,
        failed=failed,
        tries_per_pod=tries,
        herding_cov=0.0,
        duration_s=last,
    )
