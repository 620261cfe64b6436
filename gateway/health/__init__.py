"""Endpoint health: may this endpoint receive traffic? (Never: which endpoint should.)

Pure state machines: no I/O, no asyncio, no global clock or random. Callers pass ``now``
(monotonic seconds) and, where needed, a ``random.Random``. Settings are the config's own
sections (``outlier_detection``, ``circuit_breaker``, ``health_check``), passed in as they are.

How it fits together
--------------------
* :class:`EndpointHealth` (one per endpoint) holds a circuit, CLOSED -> OPEN -> HALF_OPEN -> ...,
  one set of consecutive failure counters, the ejection multiplier and, when active health checks
  are configured, an :class:`ActiveCheckState`.
* Two rules can open the circuit, and whichever trips first opens it once (the multiplier grows
  by one per opening, whatever the cause):

  1. the **circuit breaker**: ``failure_threshold`` consecutive failures of any kind (5xx,
     gateway failure, local-origin error). Local and immediate, not subject to the ejection cap.
  2. the **outlier detector** (:class:`OutlierDetector`, fleet-aware), which applies the rules
     registered in :data:`gateway.health.rules.RULES`, one module each: ``consecutive_5xx``,
     ``consecutive_gateway_failure`` (502/503/504 and local-origin errors: connect refused, reset,
     timeout), and, at each ``interval`` sweep, ``success_rate`` and ``failure_percentage``
     (off unless ``failure_percentage_threshold`` is set); these obey ``max_ejection_percent``.

* Open duration = ``base_ejection_time`` x ejection count, capped at ``max_ejection_time``. The
  breaker's ``recovery_time`` is the same setting. Each sweep in which an endpoint stayed closed
  (and passed its probes) for the whole interval takes one off its ejection count.
* When the open time is up, the next :meth:`EndpointHealth.try_acquire` moves it to HALF_OPEN and
  hands out at most ``half_open_requests`` trial permits. The first trial outcome decides: success
  closes the circuit (``Transition.recovered`` tells the gateway to reset the endpoint's load
  signals), failure re-opens it for the next, longer duration. A cancelled trial returns its
  permit.
* :meth:`OutlierDetector.in_panic`: when fewer than ``panic_threshold`` percent of a group's
  endpoints are routable, the gateway balances across all of them.
* Active probe results (:class:`ActiveCheckState`) only gate :meth:`EndpointHealth.is_routable`;
  they never count as request failures and never open or close the circuit.

Wiring: for each try, ``if health.try_acquire(now)`` -> forward -> ``detector.on_outcome(health,
fleet, classify(status, local_error, cancelled), now)`` (which calls ``health.record``; call
``health.record`` yourself only where there is no detector). Call ``detector.sweep(fleet, now)``
every ``interval``. Every transition is returned and also passed to the optional ``listener``
given to :class:`EndpointHealth` (the only way to see OPEN -> HALF_OPEN, which happens inside
``try_acquire``).

Differences from Envoy
----------------------
Names and defaults follow Envoy's ``outlier_detection`` (and Istio's defaults: consecutive 5,
interval 10 s, base 30 s). Where tailgate differs:

* **Two rules, one circuit.** Envoy has outlier ejection only; tailgate adds a local breaker that
  shares the counters and the open duration. With the defaults (``failure_threshold`` 5 =
  ``consecutive_5xx`` 5) the breaker trips first on any run of failures, so
  ``max_ejection_percent`` in practice limits ``consecutive_gateway_failure`` (when set lower) and
  success-rate ejections; fleet-wide failure is handled by the panic threshold. To have Envoy's
  capped-only behaviour set ``circuit_breaker.enabled: false``.
* **"Circuit breaker" means something else in Envoy**, where it is a concurrency limit
  (``max_requests``, ``max_pending_requests``, ``max_retries``). Those live in tailgate's
  ``limits`` (``gateway.capacity``) and ``retries.budget_percent`` (``gateway.retry_budget``).
* **Return through HALF_OPEN.** Envoy returns an ejected host to full service when its time is up
  (checked at the next interval tick); tailgate admits ``half_open_requests`` trial requests
  first, and returns as soon as the time is up rather than at the next sweep.
* **Cap counts every open circuit.** Envoy's cap counts outlier ejections; tailgate counts every
  endpoint whose circuit is not CLOSED (breaker openings included), since the cap protects fleet
  capacity. ``ejected + 1 <= max_ejection_percent`` of the fleet, and one ejection is always
  allowed when none is active (Envoy's ``always_eject_one_host: true``; older Envoy behaved so
  by default).
* **``max_ejection_percent`` defaults to 50** (Envoy and Istio: 10). Inference fleets are small
  (10% of 4 replicas is one) and, with the panic threshold also at 50%, outlier ejections alone
  never put a group of two or more in panic.
* **Consecutive rules retry.** Envoy fires a consecutive ejection only when the counter *equals*
  the threshold, so an ejection refused by the cap is forgotten until a success resets the
  counter; tailgate uses ``>=`` and tries again on each further failure.
* **No split between local-origin and external errors** (Envoy's default,
  ``split_external_local_origin_errors: false``): local-origin errors count as 5xx and as gateway
  failures. ``consecutive_local_origin_failure`` is not implemented.
* **No ``enforcing_*`` percentages.** Every rule is enforced at 100%. Envoy's default
  ``enforcing_consecutive_gateway_failure`` is 0 (detect, don't eject); tailgate ejects.
  Failure-percentage ejection is off by default as in Envoy (``enforcing_failure_percentage``
  0), here by leaving ``failure_percentage_threshold`` unset. A rule
  is turned off with its threshold at 0 (in code; the config requires > 0), every outlier rule
  with ``outlier_detection.enabled: false``.
* **``success_rate_stdev_factor`` is a plain factor** (1.9), not thousandths (1900).
* **Success-rate ejection takes the worst first**, so when the cap stops it, the endpoints left
  in are the better ones (Envoy walks hosts in order). Only CLOSED endpoints take part.
* **Multiplier decay** requires the endpoint to have been CLOSED for the whole interval, not just
  at the sweep instant; the multiplier stops growing at ``max_ejection_time / base`` as in Envoy.
  ``max_ejection_time_jitter`` is not implemented.
* **Late outcomes are ignored.** Outcomes recorded while OPEN (requests sent before it opened)
  and in HALF_OPEN with no trial in flight change nothing. A straggler that lands while a trial
  is in flight is taken as the trial's result (``try_acquire`` returns a bool, not a token).
* **Active checks never uneject.** Envoy's ``successful_active_health_check_uneject_host``
  (default on) lets a passing probe end an ejection; tailgate does not, because an inference
  server's ``/ready`` passing does not prove inference works. Probe failures also don't count
  toward outlier detection.
* **Active check start state.** An endpoint is routable until its first probe answers, and that
  first answer is decisive in either direction (see :class:`ActiveCheckState`). Envoy, by
  contrast, holds a new host back until its first check passes during cluster warming.
  Probe delay jitter is symmetric (``interval x [1 - j, 1 + j]``), Envoy's is additive.
* **Panic threshold** (Envoy's ``healthy_panic_threshold``, 50%) is evaluated per backend group
  with no priority levels or degraded hosts; 0 turns it off.
"""

from .active import ActiveCheckState
from .circuit import EndpointHealth
from .outcome import Outcome, classify
from .outlier import OutlierDetector
from .rules import RULES, OutlierRule
from .transition import CheckState, CircuitState, Reason, Transition, TransitionListener

__all__ = [
    "RULES",
    "ActiveCheckState",
    "CheckState",
    "CircuitState",
    "EndpointHealth",
    "Outcome",
    "OutlierDetector",
    "OutlierRule",
    "Reason",
    "Transition",
    "TransitionListener",
    "classify",
]
