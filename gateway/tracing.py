"""W3C Trace Context for the gateway: continue a client's trace, or start one, and hand each
upstream try its own span id.

- An incoming valid ``traceparent`` continues: the trace id stays, the flags stay, and every try
  goes upstream with a span id of the gateway's own (the backend's spans hang under the try).
  ``tracestate`` is relayed unchanged, as a participant that adds no entry of its own may.
- A request without one (or with an invalid one, which the spec says to ignore, together with
  its ``tracestate``) starts a new trace, sampled.
- The trace id is in the access log line, so a log line and a trace find each other.

:class:`Tracer` only makes ids and exports nothing: the default, costing two random draws a
try. ``gateway.otel.OtlpTracer`` (the ``otel`` extra) records the same spans through the
OpenTelemetry SDK and exports them over OTLP/HTTP.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from gateway.config.model import TracingConfig
from gateway.failures import Failure, consequence

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
SAMPLED = 0x01
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True)
class TraceParent:
    """A parsed ``traceparent``: lower-case hex ids, the flags as a byte."""

    trace_id: str
    parent_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The header's fields, or None when it is absent or invalid (W3C Trace Context, level 1).

    Version ``ff`` and all-zero ids are invalid; version 00 has exactly four fields; a later
    version may append more, which are ignored (the spec's forward compatibility).
    """
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def format_traceparent(trace_id: str, span_id: str, flags: int) -> str:
    return f"00-{trace_id}-{span_id}-{flags:02x}"


def new_trace_id(rng: random.Random) -> str:
    while (value := rng.getrandbits(128)) == 0:
        pass
    return f"{value:032x}"


def new_span_id(rng: random.Random) -> str:
    while (value := rng.getrandbits(64)) == 0:
        pass
    return f"{value:016x}"


class TryResult(Protocol):
    """What a finished try says about itself (``gateway.attempt.Attempt`` has these)."""

    status: int | None
    failure: Failure | None


def try_outcome(result: TryResult) -> str:
    """One word for a try's span: the status code, the failure, or cancelled (the client's
    doing: nothing the backend did)."""
    failure = result.failure
    if failure is not None:
        return "cancelled" if consequence(failure).client_fault else failure.value
    return str(result.status) if result.status is not None else "reset"


class TrySpan:
    """One upstream try's span: ``traceparent`` is what goes upstream with it."""

    __slots__ = ("continued", "result", "traceparent")

    def __init__(self, traceparent: str, result: TryResult, continued: bool) -> None:
        self.traceparent = traceparent
        self.result = result
        self.continued = continued

    def stamp(self, headers: MutableMapping[str, str]) -> None:
        """Put the try's trace context on its upstream request: its own ``traceparent``; the
        client's ``tracestate`` only with the client's trace (the spec drops it when the
        ``traceparent`` beside it was invalid or missing)."""
        headers[TRACEPARENT] = self.traceparent
        if not self.continued:
            headers.pop(TRACESTATE, None)

    def __enter__(self) -> TrySpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.ended(try_outcome(self.result))

    def ended(self, outcome: str) -> None:
        """Called once when the try is over; the ids-only span has nothing to record."""


class RequestTrace:
    """One request's place in a trace: the ids-only kind (see the module docstring)."""

    __slots__ = ("_rng", "continued", "flags", "span_id", "trace_id")

    def __init__(
        self, trace_id: str, span_id: str, flags: int, continued: bool, rng: random.Random
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.continued = continued  # the client's trace, not one the gateway started
        self._rng = rng

    def start_try(self, backend: str, number: int, result: TryResult) -> TrySpan:
        """A span for try ``number`` at ``backend``, a child of the request's span."""
        span_id = new_span_id(self._rng)
        traceparent = format_traceparent(self.trace_id, span_id, self.flags)
        return TrySpan(traceparent, result, self.continued)

    def event(self, name: str, attributes: Mapping[str, str | int]) -> None:
        """Something that happened to the request (a retry, a hedge): kept only when exported."""

    def end(self, status: int, route: str, backend: str) -> None:
        """The request is answered (``status``; 499 when the client left)."""


class Tracer:
    """Makes :class:`RequestTrace` objects from the client's headers; exports nothing."""

    def __init__(self, settings: TracingConfig, rng: random.Random) -> None:
        self.settings = settings
        self._rng = rng

    def start(self, headers: Mapping[str, str], method: str, path: str) -> RequestTrace:
        parent = parse_traceparent(headers.get(TRACEPARENT))
        span_id = new_span_id(self._rng)
        if parent is None:
            return RequestTrace(new_trace_id(self._rng), span_id, SAMPLED, False, self._rng)
        return RequestTrace(parent.trace_id, span_id, parent.flags, True, self._rng)

    def close(self) -> None:
        """Flush and stop any exporter (blocking: call it off the event loop)."""


def build_tracer(settings: TracingConfig, rng: random.Random) -> Tracer | None:
    """The tracer the config asks for: None when tracing is off, the OTLP one with an endpoint."""
    if not settings.enabled:
        return None
    if settings.otlp.endpoint is None:
        return Tracer(settings, rng)
    from gateway.otel import OtlpTracer  # the otel extra: imported only when asked for

    return OtlpTracer(settings, rng)
