"""The one place an upstream try's outcome is recorded.

An :class:`Attempt` wraps one try at one endpoint as a context manager: entering counts the
request in flight; leaving — by success, error or cancellation — records everything exactly
once: the latency sample, the in-flight decrement, the work it carried (LLM tokens), the
health outcome (circuit breaker and outlier detector), and the metrics. No code path can
forget to record, or record twice. What a failure means for health comes from the one table
in ``gateway.failures``.

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


class OutcomeSink(Protocol):
    """Where a finished attempt's health outcome goes (the outlier detector or the circuit)."""

    def __call__(self, endpoint: Endpoint, outcome: Outcome, now: float) -> Transition | None: ...


class Attempt:
    """One try at ``endpoint``; see the module docstring."""

    __slots__ = (
        "_clock",
        "_metrics",
        "_on_done",
        "_sink",
        "_tokens_ahead",
        "decode_tokens",
        "endpoint",
        "failure",
        "first_body_at",
        "first_byte_at",
        "prefill_tokens",
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
        prefill_tokens: int = 0,
        decode_tokens: int = 0,
    ) -> None:
        """``prefill_tokens`` (the prompt tokens not expected cached there) and
        ``decode_tokens`` (the output expected) are the work this try puts on ``endpoint``."""
        self.endpoint = endpoint
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

        A stream keeps counting as waiting until its first event (:meth:`got_first_event`):
        inference servers send a stream's head before prefill, so it is no answer yet."""
        now = self._clock()
        self.first_byte_at = now
        self.status = status
        self.streaming = streaming
        if not streaming:
            self.endpoint.signals.headers_received(self.started_at)
        self._metrics.time_to_first_byte_for(self.endpoint.name).observe(now - self.started_at)
        if reported_depth is not None:
            try:
                depth = float(reported_depth)
            except ValueError:
                return
            if depth >= 0:  # NaN fails this too; signals also drop infinities
                self.endpoint.signals.report_queue_depth(depth, now)

    def got_first_event(self) -> None:
        """A stream's first body byte arrived: its time to first token, and its prefill done."""
        if self.first_body_at is not None or not self.streaming:
            return
        now = self._clock()
        self.first_body_at = now
        signals = self.endpoint.signals
        signals.headers_received(self.started_at)
        signals.work.first_token(self.prefill_tokens, now - self.started_at, self._tokens_ahead)

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
        """The try is over: record everything, exactly once."""
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
        self._on_done(self.endpoint)

    def _latency(self, now: float, outcome: Outcome) -> float | None:
        """The sample the balancer learns from: time to the first event for streams (time to
        first token), the whole exchange otherwise.

        A failed try teaches latency only if it took long (a timeout is evidence of slowness);
        a fast connect-refused is not a fast backend, so it gives no sample. A stream whose
        head came but no event is as slow as it has been so far.
        """
        if outcome is Outcome.CANCELLED:
            return None
        if self.first_byte_at is None:
            return now - self.started_at if self.failure is Failure.TIMEOUT else None
        if self.streaming:
            end = self.first_body_at if self.first_body_at is not None else now
            return end - self.started_at
        return now - self.started_at
