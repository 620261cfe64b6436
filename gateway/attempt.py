"""The one place an upstream try's outcome is recorded.

An :class:`Attempt` wraps one try at one endpoint as a context manager: entering counts the
request in flight; leaving — by success, error or cancellation — records everything exactly
once: the latency sample, the in-flight decrement, the work it carried (LLM tokens), the
health outcome (circuit breaker and outlier detector), the metrics and its trace span. No code
path can forget to record, or record twice. The time to the response head (for a stream, to
its first body byte: inference servers send a stream's head before prefill) is the try's
latency and also teaches the hedge delay of the backend's group (``gateway.hedging``).
What a failure means for health comes from the one table in ``gateway.failures``.

The fleet simulator, which has no ``with`` block spanning virtual time, calls :meth:`begin` and
:meth:`end` itself: the context manager is only those two calls.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from gateway.endpoint import Endpoint
from gateway.failures import Failure, consequence, status_outcome
from gateway.health.outcome import Outcome
from gateway.health.transition import Transition
from gateway.metrics import GatewayMetrics
from gateway.tracing import TrySpan, try_outcome


class OutcomeSink(Protocol):
    """Where a finished attempt's health outcome goes (the outlier detector or the circuit)."""

    def __call__(self, endpoint: Endpoint, outcome: Outcome, now: float) -> Transition | None: ...


LatencySink = Callable[[str, bool, float], None]  # (group, streaming, latency_s)
_OUTPACED = frozenset({Failure.HEDGE_LOST, Failure.OUTRUN})  # cancelled: the other try won


class Attempt:
    """One try at ``endpoint``; see the module docstring."""

    __slots__ = (
        "_clock",
        "_ended",
        "_latency_sink",
        "_metrics",
        "_on_done",
        "_sink",
        "_tokens_ahead",
        "client_s",
        "decode_tokens",
        "endpoint",
        "failure",
        "first_body_at",
        "first_byte_at",
        "prefill_tokens",
        "span",
        "started_at",
        "status",
        "streaming",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        clock: Callable[[], float],
        metrics: GatewayMetrics,
        sink: OutcomeSink,
        on_done: Callable[[Endpoint], None],
        latency_sink: LatencySink | None = None,
        prefill_tokens: int = 0,
        decode_tokens: int = 0,
    ) -> None:
        """``prefill_tokens`` (the prompt tokens not expected cached there) and
        ``decode_tokens`` (the output expected) are the work this try puts on ``endpoint``."""
        self.endpoint = endpoint
        self._ended = False
        self._latency_sink = latency_sink
        self._clock = clock
        self._metrics = metrics
        self._sink = sink
        self._on_done = on_done
        self.started_at = 0.0
        self.first_byte_at: float | None = None
        self.status: int | None = None
        self.failure: Failure | None = None
        self.streaming = False
        self.first_body_at: float | None = None  # a stream's first event
        self.prefill_tokens = prefill_tokens
        self.decode_tokens = decode_tokens
        self._tokens_ahead = 0
        self.span: TrySpan | None = None  # tracing: this try's span, ended with it
        self.client_s = 0.0  # time spent waiting for the client's body: not the backend's

    def __enter__(self) -> Attempt:
        self.begin()
        return self

    def begin(self) -> None:
        """The try starts: it counts in flight from now."""
        self.started_at = self._clock()
        signals = self.endpoint.signals
        signals.request_started(self.started_at)
        self._tokens_ahead = signals.work.started(self.prefill_tokens, self.decode_tokens)

    def got_headers(self, status: int, streaming: bool, reported_depth: str | None) -> None:
        """Response headers arrived: time to first byte, and any queue depth reported.

        A stream keeps counting as waiting until its first event (:meth:`got_first_body_byte`):
        inference servers send a stream's head before prefill, so it is no answer yet."""
        now = self._clock()
        self.first_byte_at = now
        self.status = status
        self.streaming = streaming
        if not streaming:
            self.endpoint.signals.headers_received(self.started_at)
        ttfb = max(now - self.started_at - self.client_s, 0.0)
        self._metrics.time_to_first_byte_for(self.endpoint.name).observe(ttfb)
        if not streaming and self._latency_sink is not None:
            self._latency_sink(self.endpoint.group, False, ttfb)
        if reported_depth is not None:
            try:
                depth = float(reported_depth)
            except ValueError:
                return
            if depth >= 0:  # NaN fails this too; signals also drop infinities
                self.endpoint.signals.report_queue_depth(depth, now)

    def got_first_body_byte(self) -> None:
        """A stream's first body byte arrived (the handler skips a chat stream's role-only
        opening event, sent before prefill): its time to first token, its prefill done, and
        what a streamed try's hedge delay is made of."""
        if self.first_body_at is not None or not self.streaming:
            return
        now = self._clock()
        self.first_body_at = now
        signals = self.endpoint.signals
        signals.headers_received(self.started_at)
        waited_s = max(now - self.started_at - self.client_s, 0.0)
        signals.work.first_token(self.prefill_tokens, waited_s, self._tokens_ahead)
        if self._latency_sink is not None:
            self._latency_sink(self.endpoint.group, True, waited_s)

    @property
    def _answer_began(self) -> bool:
        """Has the backend begun its answer (headers, or a stream's first event)?"""
        if self.streaming:
            return self.first_body_at is not None
        return self.first_byte_at is not None

    def failed(self, failure: Failure) -> None:
        """The try ended badly: the backend's fault or the client's, as the table says.

        A client fault is never replaced by a later backend failure: once the client broke the
        try, nothing it caused afterwards is the backend's.
        """
        if self.failure is None or not consequence(self.failure).client_fault:
            self.failure = failure

    def client_waited(self, seconds: float) -> None:
        """This try waited ``seconds`` for the client's streamed body: kept out of its latency."""
        self.client_s += seconds

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # CancelledError (client disconnect) is a BaseException but not an Exception.
        if exc_type is not None and not issubclass(exc_type, Exception):
            self.failed(Failure.CLIENT_GONE)
        self.end()

    def end(self) -> None:
        """The try is over: record everything, exactly once (a second call does nothing, so a
        try can be ended early, e.g. a broken stream before it is resumed elsewhere)."""
        if self._ended:
            return
        self._ended = True
        now = self._clock()
        if self.failure is None and self.status is None:
            self.failure = Failure.RESET  # an unexpected error before headers: no answer
        if self.failure is not None:
            outcome = consequence(self.failure).outcome
        else:
            assert self.status is not None
            outcome = status_outcome(self.status)
        cancelled = outcome is Outcome.CANCELLED
        latency = self._latency(now, outcome)
        failed = outcome.is_failure
        duration = None if latency is None else now - self.started_at
        began = self._answer_began
        signals = self.endpoint.signals
        signals.work.finished(0 if began else self.prefill_tokens, self.decode_tokens)
        signals.request_finished(
            latency,
            now,
            failed=failed,
            duration_s=duration,
            started_at=self.started_at,
            headers_seen=began,
        )
        name = self.endpoint.name
        if latency is not None:
            self._metrics.upstream_latency_for(name).observe(latency)
        if self.failure is not None and not cancelled:
            self._metrics.upstream_failures_for(name, self.failure.value).inc()
        self._sink(self.endpoint, outcome, now)  # transitions reach metrics via the listener
        if self.span is not None:
            self.span.ended(try_outcome(self))
        self._on_done(self.endpoint)

    def _latency(self, now: float, outcome: Outcome) -> float | None:
        """The sample the balancer learns from: time to the first event for streams (time to
        first token), the whole exchange otherwise.

        A failed try teaches latency only if it took long (a timeout is evidence of slowness);
        a fast connect-refused is not a fast backend, so it gives no sample. A stream whose
        head came but no event is as slow as it has been so far. A try that lost to its hedge
        had no answer for longer than the group's p95: the time it waited is a lower bound of
        its latency, which keeps a hanging backend from looking idle and fast.
        """
        start = self.started_at + self.client_s
        if self.failure in _OUTPACED and not self._answer_began:
            return max(now - start, 0.0)
        if outcome is Outcome.CANCELLED:
            return None
        if self.first_byte_at is None:
            return max(now - start, 0.0) if self.failure is Failure.TIMEOUT else None
        if self.streaming:
            end = self.first_body_at if self.first_body_at is not None else now
            return max(end - start, 0.0)
        return max(now - start, 0.0)
