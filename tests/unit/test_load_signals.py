"""EndpointSignals with a fake clock: every `now` below is an explicit number of seconds."""

import json
import math

import pytest

from gateway.config import ConfigError, parse_config
from gateway.config.model import BalancerConfig, LatencyConfig, QueueDepthConfig
from gateway.load import EndpointSignals

PRIOR_S = 0.2


def sample(signals: EndpointSignals, latency_s: float | None, now: float) -> None:
    signals.request_started(now)
    signals.request_finished(latency_s, now)


# -- latency: prior, peak, decay ------------------------------------------------------------


def test_latency_is_the_prior_before_any_sample() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    assert not signals.has_latency
    assert signals.latency_s(0.0, PRIOR_S) == PRIOR_S
    assert signals.latency_s(1000.0, 0.7) == 0.7


def test_first_sample_becomes_the_estimate() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    sample(signals, 0.05, now=5.0)
    assert signals.has_latency
    assert signals.latency_s(5.0, PRIOR_S) == pytest.approx(0.05)


def test_one_slow_sample_raises_the_estimate_at_once() -> None:
    signals = EndpointSignals(BalancerConfig(latency=LatencyConfig(decay=10.0)), now=0.0)
    sample(signals, 0.1, now=1.0)
    sample(signals, 2.0, now=1.001)
    assert signals.latency_s(1.001, PRIOR_S) == pytest.approx(2.0)


def test_without_peak_sensitivity_a_slow_sample_is_averaged_in() -> None:
    signals = EndpointSignals(
        BalancerConfig(latency=LatencyConfig(decay=10.0, peak_sensitive=False)), now=0.0
    )
    sample(signals, 0.1, now=1.0)
    sample(signals, 2.0, now=11.0)  # one time constant later: the old value keeps e^-1
    keep = math.exp(-1.0)
    assert signals.latency_s(11.0, PRIOR_S) == pytest.approx(0.1 * keep + 2.0 * (1 - keep))


def test_recovery_decays_with_elapsed_time() -> None:
    signals = EndpointSignals(BalancerConfig(latency=LatencyConfig(decay=10.0)), now=0.0)
    sample(signals, 2.0, now=0.0)
    sample(signals, 0.1, now=10.0)
    keep = math.exp(-1.0)
    assert signals.latency_s(10.0, PRIOR_S) == pytest.approx(2.0 * keep + 0.1 * (1 - keep))


def test_recovery_does_not_depend_on_the_number_of_samples() -> None:
    """A thousand fast samples within 1 ms move the estimate no further than time allows."""
    one = EndpointSignals(BalancerConfig(latency=LatencyConfig(decay=10.0)), now=0.0)
    many = EndpointSignals(BalancerConfig(latency=LatencyConfig(decay=10.0)), now=0.0)
    for signals in (one, many):
        sample(signals, 2.0, now=0.0)
    sample(one, 0.1, now=0.001)
    for i in range(1000):
        sample(many, 0.1, now=0.001 * (i + 1) / 1000)
    assert many.latency_s(0.001, PRIOR_S) == pytest.approx(one.latency_s(0.001, PRIOR_S))
    assert many.latency_s(0.001, PRIOR_S) > 1.99


def test_latency_fades_toward_the_prior_while_idle() -> None:
    signals = EndpointSignals(BalancerConfig(latency=LatencyConfig(idle_decay=30.0)), now=0.0)
    sample(signals, 3.0, now=0.0)
    readings = [signals.latency_s(t, PRIOR_S) for t in (0.0, 30.0, 60.0, 300.0)]
    assert readings[0] == pytest.approx(3.0)
    assert readings[1] == pytest.approx(PRIOR_S + (3.0 - PRIOR_S) * math.exp(-1.0))
    assert readings == sorted(readings, reverse=True)
    assert readings[-1] == pytest.approx(PRIOR_S, abs=1e-3)


def test_a_fast_idle_endpoint_fades_up_toward_the_prior() -> None:
    signals = EndpointSignals(BalancerConfig(latency=LatencyConfig(idle_decay=30.0)), now=0.0)
    sample(signals, 0.01, now=0.0)
    assert signals.latency_s(30.0, PRIOR_S) == pytest.approx(
        PRIOR_S + (0.01 - PRIOR_S) * math.exp(-1.0)
    )


def test_reading_does_not_change_the_estimate() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    sample(signals, 1.0, now=0.0)
    signals.latency_s(100.0, PRIOR_S)
    assert signals.latency_s(0.0, PRIOR_S) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [None, math.nan, math.inf])
def test_requests_without_a_usable_sample_leave_latency_alone(bad: float | None) -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    sample(signals, 0.3, now=0.0)
    sample(signals, bad, now=1.0)
    assert signals.samples == 1
    assert signals.latency_s(0.0, PRIOR_S) == pytest.approx(0.3)
    assert signals.in_flight == 0


def test_a_negative_latency_counts_as_zero() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    sample(signals, -0.5, now=0.0)
    assert signals.latency_s(0.0, PRIOR_S) == 0.0


# -- in-flight and queue depth --------------------------------------------------------------


def test_in_flight_counts_started_minus_finished_and_never_goes_negative() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    for _ in range(3):
        signals.request_started(0.0)
    signals.request_finished(0.1, 1.0)
    assert signals.in_flight == 2
    for _ in range(5):
        signals.request_finished(None, 2.0)
    assert signals.in_flight == 0


def test_queue_depth_without_a_report_is_the_in_flight_count() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.request_started(0.0)
    signals.request_started(0.0)
    assert signals.queue_depth(0.0) == 2.0


def test_a_fresh_report_adds_the_requests_that_are_not_ours() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.request_started(0.0)
    signals.report_queue_depth(10.0, now=0.0)  # 1 of the 10 is ours
    assert signals.queue_depth(0.5) == 10.0
    signals.request_started(1.0)  # we added one since the report
    assert signals.queue_depth(1.0) == 11.0
    signals.request_finished(None, 1.5)
    signals.request_finished(None, 1.5)
    assert signals.queue_depth(1.5) == 9.0


def test_a_report_fades_as_the_queue_turns_over_in_about_one_latency() -> None:
    """With a latency estimate L, others' reported requests count exp(-age / L)."""
    signals = EndpointSignals(
        BalancerConfig(queue_depth=QueueDepthConfig(fresh=60.0, stale=60.0)), now=0.0
    )
    signals.request_started(0.0)
    signals.request_finished(0.5, 0.0)  # a 500 ms backend
    signals.report_queue_depth(10.0, now=0.0)
    assert signals.queue_depth(0.0) == pytest.approx(10.0)
    assert signals.queue_depth(0.5) == pytest.approx(10.0 * math.exp(-1.0))
    assert signals.queue_depth(5.0) == pytest.approx(10.0 * math.exp(-10.0))


def test_a_report_below_our_own_count_does_not_cancel_it() -> None:
    """A backend that reports only waiting requests: ours are still counted exactly."""
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    for _ in range(8):
        signals.request_started(0.0)
    signals.report_queue_depth(3.0, now=0.0)
    assert signals.queue_depth(0.0) == 8.0


def test_a_stale_report_fades_out_linearly() -> None:
    config = BalancerConfig(queue_depth=QueueDepthConfig(fresh=2.0, stale=10.0))
    signals = EndpointSignals(config, now=0.0)
    signals.request_started(0.0)
    signals.report_queue_depth(9.0, now=0.0)  # 8 requests are not ours
    assert signals.queue_depth(2.0) == 9.0
    assert signals.queue_depth(6.0) == pytest.approx(1.0 + 8.0 * 0.5)
    assert signals.queue_depth(10.0) == pytest.approx(1.0)
    assert signals.queue_depth(1000.0) == 1.0


def test_fresh_equal_to_stale_drops_the_report_at_once() -> None:
    signals = EndpointSignals(
        BalancerConfig(queue_depth=QueueDepthConfig(fresh=1.0, stale=1.0)), now=0.0
    )
    signals.report_queue_depth(5.0, now=0.0)
    assert signals.queue_depth(1.0) == 5.0
    assert signals.queue_depth(1.0001) == 0.0


def test_a_newer_report_replaces_the_older() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.report_queue_depth(50.0, now=0.0)
    signals.report_queue_depth(4.0, now=1.0)
    assert signals.queue_depth(1.0) == 4.0


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_unusable_reports_are_ignored(bad: float) -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.report_queue_depth(bad, now=0.0)
    assert signals.queue_depth(0.0) == 0.0


# -- slow start and recovery ----------------------------------------------------------------


def test_slow_start_off_means_full_weight_at_once() -> None:
    signals = EndpointSignals(BalancerConfig(slow_start=0.0), now=0.0)
    assert signals.slow_start_factor(0.0) == 1.0


def test_slow_start_ramps_linearly_from_the_minimum_weight() -> None:
    config = BalancerConfig(slow_start=60.0, slow_start_min_weight=0.1)
    signals = EndpointSignals(config, now=100.0)
    assert signals.slow_start_factor(100.0) == pytest.approx(0.1)
    assert signals.slow_start_factor(130.0) == pytest.approx(0.55)
    assert signals.slow_start_factor(160.0) == 1.0
    assert signals.slow_start_factor(1e6) == 1.0
    assert signals.slow_start_factor(50.0) == pytest.approx(0.1)  # clock before creation


def test_recovery_forgets_latency_and_reports_and_restarts_slow_start() -> None:
    config = BalancerConfig(slow_start=10.0, slow_start_min_weight=0.2)
    signals = EndpointSignals(config, now=0.0)
    signals.request_started(0.0)
    sample(signals, 5.0, now=20.0)
    signals.report_queue_depth(40.0, now=20.0)
    assert signals.slow_start_factor(20.0) == 1.0

    signals.reset_for_recovery(now=30.0)
    assert not signals.has_latency
    assert signals.latency_s(30.0, PRIOR_S) == PRIOR_S
    assert signals.queue_depth(30.0) == 1.0  # our in-flight request is still counted
    assert signals.slow_start_factor(30.0) == pytest.approx(0.2)
    assert signals.slow_start_factor(40.0) == 1.0


def test_snapshot_is_json_and_names_units() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    empty = signals.snapshot(0.0, PRIOR_S)
    assert empty["latency_s"] == PRIOR_S
    assert empty["report_age_s"] is None
    assert empty["latency_sample_age_s"] is None

    signals.request_started(0.0)
    signals.report_queue_depth(3.0, now=1.0)
    sample(signals, 0.25, now=2.0)
    snap = signals.snapshot(4.0, PRIOR_S)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["in_flight"] == 1
    assert snap["latency_samples"] == 1
    assert snap["latency_sample_age_s"] == 2.0
    assert snap["reported_queue_depth"] == 3.0
    assert snap["report_age_s"] == 3.0
    assert snap["queue_depth"] == signals.queue_depth(4.0)
    assert snap["slow_start_factor"] == 1.0


@pytest.mark.parametrize(
    ("yaml", "path"),
    [
        ("latency: {decay: 0}", "balancer.latency.decay"),
        ("latency: {idle_decay: -1}", "balancer.latency.idle_decay"),
        ("queue_depth: {fresh: 5s, stale: 1s}", "balancer.queue_depth.fresh"),
        ("queue_depth: {fresh: -1}", "balancer.queue_depth.fresh"),
        ("slow_start: -1", "balancer.slow_start"),
        ("slow_start_min_weight: 0", "balancer.slow_start_min_weight"),
        ("slow_start_min_weight: 1.5", "balancer.slow_start_min_weight"),
    ],
)
def test_the_config_rejects_what_the_arithmetic_cannot_use(yaml: str, path: str) -> None:
    """The signals' settings are the `balancer:` section, validated there once, by field path."""
    with pytest.raises(ConfigError, match=f"{path}: "):
        parse_config(f"balancer: {{{yaml}}}\nbackends: [{{url: 'http://127.0.0.1:8000'}}]\n")


def test_a_stream_turns_its_queue_over_in_a_whole_exchange_not_a_first_byte() -> None:
    """Streams report TTFB as latency; the queue they hold lasts for the whole generation."""
    signals = EndpointSignals(
        BalancerConfig(queue_depth=QueueDepthConfig(fresh=60.0, stale=60.0)), now=0.0
    )
    signals.request_started(0.0)
    signals.request_finished(0.05, 10.0, duration_s=10.0)  # 50 ms to first token, 10 s stream
    signals.report_queue_depth(10.0, now=10.0)
    assert signals.queue_depth(11.0) == pytest.approx(10.0 * math.exp(-0.1))


# -- failures -------------------------------------------------------------------------------


def test_a_failure_counts_as_a_multiple_of_the_estimate_and_compounds_to_a_cap() -> None:
    config = BalancerConfig(latency=LatencyConfig(peak_sensitive=True))
    signals = EndpointSignals(config, now=0.0, failure_cap_s=1.0)
    signals.request_started(0.0)
    signals.request_finished(0.1, 0.0)
    for expected in (0.2, 0.4, 0.8, 1.0, 1.0):  # a fast 500 each time: the estimate climbs
        signals.request_started(1.0)
        signals.request_finished(0.001, 1.0, failed=True)
        assert signals.latency_s(1.0, prior_s=0.1) == pytest.approx(expected)


def test_a_failure_with_nothing_to_compare_teaches_nothing() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.request_started(0.0)
    signals.request_finished(None, 0.0, failed=True)  # connect refused before any sample
    assert not signals.has_latency
    assert signals.in_flight == 0


# -- requests waiting for headers -----------------------------------------------------------


def test_a_hung_backend_looks_slow_as_its_requests_age() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.request_started(0.0)
    signals.request_finished(0.02, 0.02, started_at=0.0)  # a 20 ms backend...
    signals.request_started(1.0)
    signals.request_started(1.1)  # ...whose next two requests get no answer
    assert signals.waiting_age_s(1.5) == pytest.approx(0.45)
    assert signals.latency_s(1.5, prior_s=0.02) == pytest.approx(0.45)
    assert signals.latency_s(1.01, prior_s=0.02) == pytest.approx(0.02)  # young: no effect


def test_a_stream_stops_waiting_at_its_first_byte() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.request_started(0.0)
    signals.headers_received(0.0)  # streaming for minutes from here on: not a hang
    assert signals.waiting_age_s(120.0) == 0.0
    signals.request_finished(0.05, 120.0, started_at=0.0, headers_seen=True)
    assert signals.in_flight == 0 and signals.waiting_age_s(121.0) == 0.0


def test_recovery_forgets_requests_stuck_before_the_ejection() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.request_started(0.0)  # stuck since before the ejection
    signals.reset_for_recovery(now=30.0)
    signals.request_started(31.0)
    assert signals.waiting_age_s(31.5) == pytest.approx(0.5)
    signals.request_finished(None, 32.0, started_at=0.0)  # the straggler finally times out
    assert signals.waiting_age_s(32.0) == pytest.approx(1.0)


def test_a_request_begun_before_an_ejection_teaches_no_latency_after_it() -> None:
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    signals.request_started(0.0)
    signals.reset_for_recovery(now=1.0)  # the circuit opened on its burst of failures
    signals.request_finished(0.2, 1.5, failed=True, started_at=0.0)  # the rest of the burst
    assert not signals.has_latency and signals.in_flight == 0
    assert signals.latency_s(2.0, PRIOR_S) == PRIOR_S  # it returns at the fleet's prior


def test_silence_counts_from_the_first_unanswered_try_and_survives_its_cancellation() -> None:
    """A hung backend whose tries were cancelled holds nothing in flight; its silence keeps
    growing until it begins an answer, and an ejection's fresh start forgets it."""
    signals = EndpointSignals(BalancerConfig(), now=0.0)
    assert signals.silent_s(5.0) == 0.0
    signals.request_started(1.0)
    signals.request_started(1.5)  # sent while the first is unanswered: silence still from 1.0
    assert signals.silent_s(2.0) == pytest.approx(1.0)
    signals.request_finished(None, 2.0, started_at=1.0)  # cancelled, no answer
    signals.request_finished(None, 2.0, started_at=1.5)
    assert signals.in_flight == 0 and signals.waiting_age_s(3.0) == 0.0
    assert signals.silent_s(3.0) == pytest.approx(2.0)
    signals.request_started(3.0)
    signals.headers_received(3.0)  # it answers
    assert signals.silent_s(4.0) == 0.0
    signals.request_started(4.0)
    signals.reset_for_recovery(4.5)
    assert signals.silent_s(6.0) == 0.0
