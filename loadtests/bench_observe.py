"""What observability costs per answer (a benchmark, not a test).

    python -m loadtests.bench_observe [--output BENCHMARKS-observe.md]

- Token observer: µs per SSE event fed to :class:`gateway.llm_stream.AnswerObserver`, for a
  vLLM-shaped chat stream (a role chunk, content chunks, a usage chunk), one event per body
  chunk (how a token-by-token stream arrives) and 16 per chunk (a busy connection).
- Trace context: µs per request to continue a client's trace and make one try's span id, with
  the ids-only tracer and with the OpenTelemetry SDK's spans (exported to memory, so the
  exporter's network time, spent on its own thread, is left out).

Printed: the best of the repeats of a batch's mean time (the machine it ran on was shared, and
the minimum is the estimate least moved by other load).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config.model import OtlpConfig, TracingConfig
from gateway.llm_stream import AnswerObserver
from gateway.tracing import Tracer

EVENTS = 256
REPEATS = 15
HEADERS = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


def chat_stream(tokens: int) -> list[bytes]:
    """The events of a vLLM chat stream, each as its own ``data:`` frame."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m"}

    def frame(delta: dict[str, str], usage: dict[str, int] | None = None) -> bytes:
        choices = [] if usage else [{"index": 0, "delta": delta, "finish_reason": None}]
        body = {**base, "choices": choices, **({"usage": usage} if usage else {})}
        return f"data: {json.dumps(body)}\n\n".encode()

    events = [frame({"role": "assistant", "content": ""})]
    events += [frame({"content": f" tok{i}"}) for i in range(tokens)]
    events.append(frame({}, {"prompt_tokens": 100, "completion_tokens": tokens}))
    return [*events, b"data: [DONE]\n\n"]


def per_item_us(run: Callable[[], None], items: int, repeats: int = REPEATS) -> float:
    """The best of ``repeats`` runs' time per item, in microseconds."""
    run()  # warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) / items * 1e6)
    return min(samples)


def observe(chunks: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        observer = AnswerObserver(streamed=True, started_at=0.0)
        for i, chunk in enumerate(chunks):
            observer.feed(chunk, float(i))
        observer.finish(float(len(chunks)))

    return run


def decode(events: list[bytes]) -> Callable[[], None]:
    payloads = [e[6:] for e in events[:-1]]  # without "data: " and the [DONE] frame

    def run() -> None:
        for payload in payloads:
            json.loads(payload)

    return run


def trace(tracer: Tracer, requests: int) -> Callable[[], None]:
    @dataclass
    class Result:
        status: int | None = 200
        failure: str | None = None
        cancelled: bool = False

    result = Result()

    def run() -> None:
        for _ in range(requests):
            request = tracer.start(HEADERS, "POST", "/v1/chat/completions")
            with request.start_try("backend-1", 1, result):
                pass
            request.end(200, "default", "backend-1")

    return run


def otel_tracer() -> Tracer | None:
    try:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from gateway.otel import OtlpTracer
    except ImportError:
        return None
    settings = TracingConfig(otlp=OtlpConfig(endpoint="http://127.0.0.1:4318/v1/traces"))
    return OtlpTracer(settings, random.Random(0), exporter=InMemorySpanExporter())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="write the markdown table to this file as well")
    args = parser.parse_args(argv)
    events = chat_stream(EVENTS)
    batched = [b"".join(events[i : i + 16]) for i in range(0, len(events), 16)]
    ids_only = Tracer(TracingConfig(), random.Random(0))
    rows = [
        ("token observer, 1 event per chunk", per_item_us(observe(events), EVENTS), "event"),
        ("token observer, 16 events per chunk", per_item_us(observe(batched), EVENTS), "event"),
        ("json.loads of the same events (reference)", per_item_us(decode(events), EVENTS), "event"),
        ("trace context, ids only", per_item_us(trace(ids_only, 1000), 1000), "request"),
    ]
    sdk = otel_tracer()
    if sdk is not None:
        sdk_us = per_item_us(trace(sdk, 1000), 1000)
        rows.append(("trace context, OpenTelemetry SDK spans", sdk_us, "request"))
        sdk.close()
    impl = platform.python_implementation()
    lines = [
        "## Observability cost",
        "",
        "Command: `python -m loadtests.bench_observe --output BENCHMARKS-observe.md`  ",
        f"Python {platform.python_version()} ({impl}), {platform.machine()}; "
        f"a {EVENTS}-token vLLM-shaped chat stream; best of {REPEATS} repeats.",
        "",
        "| what | µs | per |",
        "| --- | --- | --- |",
        *(f"| {name} | {us:.2f} | {unit} |" for name, us, unit in rows),
        "",
    ]
    text = "\n".join(lines)
    sys.stdout.write(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
