"""W3C traceparent parsing, continuing and starting traces, and the OTel spans (in memory)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from gateway.config.model import OtlpConfig, TracingConfig
from gateway.failures import Failure
from gateway.tracing import (
    SAMPLED,
    Tracer,
    build_tracer,
    format_traceparent,
    parse_traceparent,
    try_outcome,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT_ID}-01"


@dataclass
class Result:
    status: int | None = None
    failure: Failure | None = None


def test_a_valid_traceparent_parses() -> None:
    parent = parse_traceparent(VALID)
    assert parent is not None
    assert (parent.trace_id, parent.parent_id, parent.sampled) == (TRACE_ID, PARENT_ID, True)
    assert format_traceparent(parent.trace_id, parent.parent_id, parent.flags) == VALID


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",
    ],
)
def test_invalid_traceparents_are_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_later_version_may_carry_more_fields() -> None:
    parent = parse_traceparent(f"01-{TRACE_ID}-{PARENT_ID}-00-whatever")
    assert parent is not None and not parent.sampled


def test_an_incoming_trace_continues_with_the_gateways_own_span_ids() -> None:
    tracer = Tracer(TracingConfig(), random.Random(1))
    trace = tracer.start({"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}, "POST", "/v1")
    assert trace.trace_id == TRACE_ID
    first = parse_traceparent(trace.start_try("b1", 1, Result()).traceparent)
    second = parse_traceparent(trace.start_try("b2", 2, Result()).traceparent)
    assert first is not None and second is not None
    assert first.trace_id == second.trace_id == TRACE_ID
    assert len({first.parent_id, second.parent_id, PARENT_ID, trace.span_id}) == 4
    assert first.flags == 0  # the client's sampling decision is kept


def test_a_request_without_a_trace_starts_a_sampled_one() -> None:
    tracer = Tracer(TracingConfig(), random.Random(2))
    one = tracer.start({}, "POST", "/v1")
    two = tracer.start({"traceparent": "not-a-traceparent"}, "POST", "/v1")
    assert one.trace_id != two.trace_id
    assert len(one.trace_id) == 32 and one.flags == SAMPLED


def test_a_tracestate_goes_upstream_only_with_the_trace_it_belongs_to() -> None:
    tracer = Tracer(TracingConfig(), random.Random(3))
    continued = tracer.start({"traceparent": VALID}, "POST", "/v1").start_try("b", 1, Result())
    started = tracer.start({"traceparent": "bad"}, "POST", "/v1").start_try("b", 1, Result())
    for span, kept in ((continued, True), (started, False)):
        headers = {"tracestate": "vendor=abc", "traceparent": "client's"}
        span.stamp(headers)
        assert headers["traceparent"] == span.traceparent
        assert ("tracestate" in headers) is kept


def test_build_tracer_follows_the_config() -> None:
    assert build_tracer(TracingConfig(enabled=False), random.Random()) is None
    assert type(build_tracer(TracingConfig(), random.Random())) is Tracer


def test_try_outcome_names_what_became_of_the_try() -> None:
    assert try_outcome(Result(status=200)) == "200"
    assert try_outcome(Result(failure=Failure.CONNECT)) == "connect-failure"
    assert try_outcome(Result(status=200, failure=Failure.CLIENT_GONE)) == "cancelled"
    assert try_outcome(Result()) == "reset"


def test_otel_spans_continue_the_trace_and_record_tries_and_retries() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.otel import OtlpTracer

    exporter = InMemorySpanExporter()
    settings = TracingConfig(otlp=OtlpConfig(endpoint="http://127.0.0.1:1/v1/traces"))
    tracer = OtlpTracer(settings, random.Random(), exporter=exporter)
    headers = {"traceparent": VALID, "tracestate": "vendor=abc"}
    trace = tracer.start(headers, "POST", "/v1/chat/completions")
    with trace.start_try("b1", 1, Result(status=503)) as first:
        pass
    trace.event("retry", {"reason": "503", "after_try": 1})
    with trace.start_try("b2", 2, Result(status=200)) as second:
        pass
    trace.end(200, "default", "b2")
    tracer.close()

    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans["POST /v1/chat/completions"]
    assert f"{request.context.trace_id:032x}" == trace.trace_id == TRACE_ID
    assert f"{request.parent.span_id:016x}" == PARENT_ID
    assert [e.name for e in request.events] == ["retry"]
    for name, span, sent in (("try b1", first, "503"), ("try b2", second, "200")):
        child = spans[name]
        assert child.parent.span_id == request.context.span_id
        assert child.attributes["tailgate.outcome"] == sent
        upstream = parse_traceparent(span.traceparent)
        assert upstream is not None
        assert upstream.parent_id == f"{child.context.span_id:016x}"
        assert upstream.trace_id == TRACE_ID
    assert request.context.trace_state.get("vendor") == "abc"


def test_a_reload_swaps_the_tracer_only_when_its_settings_change() -> None:
    from gateway.config import parse_config
    from gateway.runtime import Runtime

    base = "backends: [{url: 'http://127.0.0.1:8001'}]\n"
    runtime = Runtime(parse_config(base))
    first = runtime.tracer
    assert type(first) is Tracer
    runtime.reconfigure(parse_config(base + "retries: {attempts: 3}\n"))
    assert runtime.tracer is first
    runtime.reconfigure(parse_config(base + "tracing: {enabled: false}\n"))
    assert runtime.tracer is None
