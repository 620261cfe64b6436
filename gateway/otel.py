"""OTLP export of the gateway's spans through the OpenTelemetry SDK (the ``otel`` extra).

Spans: one SERVER span per request (continuing the client's trace when it sent one), one CLIENT
span per upstream try under it (``tailgate.backend``, ``tailgate.try``, ``tailgate.outcome``;
its id is the parent id the backend sees), and retries (hedges alike) as events on the
request's span. A batch processor exports them from its own thread, so the event loop never
waits on the collector; a full queue drops spans rather than memory or latency.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState

from gateway.config.model import TracingConfig
from gateway.tracing import (
    TRACEPARENT,
    TRACESTATE,
    RequestTrace,
    Tracer,
    TryResult,
    TrySpan,
    format_traceparent,
    parse_traceparent,
)


def _ids(span: trace.Span) -> tuple[str, str, int]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}", int(context.trace_flags)


class OtelTrySpan(TrySpan):
    __slots__ = ("_span",)

    def __init__(self, span: trace.Span, result: TryResult, continued: bool) -> None:
        trace_id, span_id, flags = _ids(span)
        super().__init__(format_traceparent(trace_id, span_id, flags), result, continued)
        self._span = span

    def ended(self, outcome: str) -> None:
        self._span.set_attribute("tailgate.outcome", outcome)
        if self.result.status is not None:
            self._span.set_attribute("http.response.status_code", self.result.status)
        if self.result.failure is not None or (self.result.status or 0) >= 500:
            self._span.set_status(Status(StatusCode.ERROR, outcome))
        self._span.end()


class OtelRequestTrace(RequestTrace):
    __slots__ = ("_span", "_tracer")

    def __init__(
        self, span: trace.Span, tracer: trace.Tracer, continued: bool, rng: random.Random
    ) -> None:
        trace_id, span_id, flags = _ids(span)
        super().__init__(trace_id, span_id, flags, continued, rng)
        self._span = span
        self._tracer = tracer

    def start_try(self, backend: str, number: int, result: TryResult) -> TrySpan:
        span = self._tracer.start_span(
            f"try {backend}",
            context=trace.set_span_in_context(self._span),
            kind=SpanKind.CLIENT,
            attributes={"tailgate.backend": backend, "tailgate.try": number},
        )
        return OtelTrySpan(span, result, self.continued)

    def event(self, name: str, attributes: Mapping[str, str | int]) -> None:
        self._span.add_event(name, dict(attributes))

    def end(self, status: int, route: str, backend: str) -> None:
        span = self._span
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("tailgate.route", route)
        span.set_attribute("tailgate.backend", backend)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()


class OtlpTracer(Tracer):
    """Records spans with the SDK and exports them to ``tracing.otlp.endpoint``.

    ``exporter`` replaces the OTLP/HTTP one (the SDK's in-memory exporter, in tests).
    """

    def __init__(
        self, settings: TracingConfig, rng: random.Random, exporter: SpanExporter | None = None
    ) -> None:
        super().__init__(settings, rng)
        otlp = settings.otlp
        if exporter is None:
            exporter = OTLPSpanExporter(
                endpoint=otlp.endpoint, headers=dict(otlp.headers), timeout=otlp.timeout
            )
        resource = Resource.create({"service.name": settings.service_name})
        self._provider = TracerProvider(resource=resource)  # never the process-wide default
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("tailgate")

    def start(self, headers: Mapping[str, str], method: str, path: str) -> RequestTrace:
        parent = parse_traceparent(headers.get(TRACEPARENT))
        context = None
        if parent is not None:
            state = headers.get(TRACESTATE)
            remote = SpanContext(
                trace_id=int(parent.trace_id, 16),
                span_id=int(parent.parent_id, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(parent.flags),
                trace_state=TraceState.from_header([state]) if state else None,
            )
            context = trace.set_span_in_context(NonRecordingSpan(remote))
        span = self._tracer.start_span(
            f"{method} {path}",
            context=context,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        )
        return OtelRequestTrace(span, self._tracer, parent is not None, self._rng)

    def close(self) -> None:
        self._provider.shutdown()  # flushes what is queued, within the exporter's timeout
