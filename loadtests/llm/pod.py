"""One emulated vLLM-like pod: the OpenAI API over :class:`~loadtests.llm.engine.Engine`.

    python -m loadtests.llm.pod --port 8001 --name a --kv-blocks 2000

Streams as vLLM does: the response head at once, then one event per generated token, a
last event with ``finish_reason``, a usage event when ``stream_options.include_usage`` asks,
then ``[DONE]``. A client that goes away aborts its sequence (counted as
``vllm:request_success_total{finished_reason="abort"}``). Faults are set while it runs with
``POST /_control``, e.g. ``{"slow_factor": 3}``, ``{"error_rate": 1.0}``, ``{"hang": true}``
(the engine stops stepping: streams get their head and then nothing, as a wedged engine's
would), ``{"pause_every_s": 2, "pause_for_s": 0.5}``, ``{"ready": false}``. A chat request
with ``continue_final_message`` (vLLM's) continues its final assistant message: the words
after it are the very ones an unbroken answer would have had next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import asdict, fields
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from loadtests.fakepod import Faults
from loadtests.llm.costs import EngineCosts
from loadtests.llm.engine import Engine, PromptTooLong, Sequence
from loadtests.llm.shapes import Reply
from loadtests.llm.tokens import chat_tokens, continued_chat_tokens, tokenize

ENGINE = web.AppKey("engine", Engine)
MODEL = web.AppKey("model", str)
NAME = web.AppKey("name", str)  # sent as every answer's system_fingerprint: who served it
DEFAULT_MAX_TOKENS = 16  # vLLM's default for /v1/completions


class BadRequest(ValueError):
    pass


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def _max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_completion_tokens", body.get("max_tokens", DEFAULT_MAX_TOKENS))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("max_tokens must be a positive integer")
    return value


def _prompt(body: dict[str, Any], chat: bool) -> list[str]:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("messages must be a list of objects")
        final = messages[-1] if messages else {}
        if body.get("continue_final_message") and final.get("role") == "assistant":
            return continued_chat_tokens(messages)  # a stream resumed elsewhere goes on
        return chat_tokens(messages)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("prompt must be a non-empty string")
    return tokenize(prompt)


async def _tokens(seq: Sequence) -> AsyncIterator[list[str]]:
    """The tokens each step adds to ``seq``, as they come, until it finishes."""
    sent = 0
    while True:
        await seq.changed.wait()
        seq.changed.clear()
        if len(seq.output) > sent:
            yield seq.output[sent:]
            sent = len(seq.output)
        if seq.finished:
            return


def _sse(payload: object) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _stream(
    request: web.Request, seq: Sequence, reply: Reply, usage: bool
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)  # the head goes out before any token, as vLLM's does
    if reply.chat:
        await response.write(_sse(reply.role_chunk()))
    async for tokens in _tokens(seq):
        done = seq.finished and len(seq.output) >= seq.max_tokens
        for i, token in enumerate(tokens):
            last = done and i == len(tokens) - 1
            await response.write(_sse(reply.chunk(" " + token, "length" if last else None)))
    if usage:
        await response.write(_sse(reply.usage_chunk(seq)))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def generate(request: web.Request, chat: bool) -> web.StreamResponse:
    engine = request.app[ENGINE]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        prompt, max_tokens = _prompt(body, chat), _max_tokens(body)
    except (ValueError, BadRequest) as exc:
        message = str(exc) if isinstance(exc, BadRequest) else "the body is not valid JSON"
        return _error(400, message, "invalid_request_error")
    faults = engine.faults
    if faults.error_rate > 0 and engine.rng.random() < faults.error_rate:
        return _error(faults.error_status, "injected failure", "server_error")
    try:
        seq = engine.submit(prompt, max_tokens)
    except PromptTooLong as exc:
        return _error(400, str(exc), "invalid_request_error")
    reply = Reply(str(body.get("model") or request.app[MODEL]), chat, request.app[NAME])
    options = body.get("stream_options")
    usage = isinstance(options, dict) and bool(options.get("include_usage"))
    try:
        if body.get("stream"):
            return await _stream(request, seq, reply, usage)
        async for _ in _tokens(seq):
            pass
        return web.json_response(reply.whole(seq))
    except (asyncio.CancelledError, ConnectionResetError):
        engine.abort(seq)  # the client went away: its sequence stops taking steps
        raise


async def completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await generate(request, chat=True)


async def health(request: web.Request) -> web.Response:
    ok = request.app[ENGINE].faults.ready
    return web.json_response({"status": "ok" if ok else "not ready"}, status=200 if ok else 503)


async def models(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    max_len = engine.pool.num_blocks * engine.pool.block_tokens
    card = {
        "id": request.app[MODEL],
        "object": "model",
        "owned_by": "tailgate-emulator",
        "max_model_len": max_len,
    }
    return web.json_response({"object": "list", "data": [card]})


async def metrics(request: web.Request) -> web.Response:
    """Engine state under vLLM's metric names, labelled with ``model_name`` as vLLM does."""
    engine, c = request.app[ENGINE], request.app[ENGINE].counters
    registry = CollectorRegistry()
    labels = {"model_name": request.app[MODEL]}

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, list(labels), registry=registry).labels(**labels).set(value)

    def counter(name: str, doc: str, value: float, **extra: str) -> None:
        names = [*labels, *extra]
        Counter(name, doc, names, registry=registry).labels(**labels, **extra).inc(value)

    gauge("vllm:num_requests_waiting", "Requests waiting", len(engine.waiting))
    gauge("vllm:num_requests_running", "Requests in the batch", len(engine.running))
    gauge("vllm:kv_cache_usage_perc", "KV blocks in use, 0-1", engine.kv_usage())
    counter("vllm:prefix_cache_queries", "Prompt tokens looked up", c.prefix_queries_tokens)
    counter("vllm:prefix_cache_hits", "Prompt tokens found cached", c.prefix_hits_tokens)
    counter("vllm:prompt_tokens", "Prompt tokens", c.prompt_tokens)
    counter("vllm:generation_tokens", "Generated tokens", c.generation_tokens)
    config_labels = ["block_size", "num_gpu_blocks", "enable_prefix_caching"]
    info = Gauge(
        "vllm:cache_config_info", "KV cache configuration", config_labels, registry=registry
    )
    info.labels(str(engine.pool.block_tokens), str(engine.pool.num_blocks), "True").set(1)
    success = Counter(
        "vllm:request_success", "Finished requests", [*labels, "finished_reason"], registry=registry
    )
    success.labels(**labels, finished_reason="length").inc(c.finished)
    success.labels(**labels, finished_reason="abort").inc(c.aborted)
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def control(request: web.Request) -> web.Response:
    faults = request.app[ENGINE].faults
    try:
        changes = await request.json()
    except ValueError:
        return _error(400, "the body is not valid JSON", "invalid_request_error")
    known = {f.name for f in fields(Faults)}
    unknown = sorted(set(changes) - known) if isinstance(changes, dict) else ["(not an object)"]
    if unknown:
        return _error(
            400, f"unknown faults {unknown}; known: {sorted(known)}", "invalid_request_error"
        )
    for key, value in changes.items():
        setattr(faults, key, value)
    return web.json_response({"faults": asdict(faults)})


async def stats(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    return web.json_response(
        {
            **asdict(engine.counters),
            "waiting": len(engine.waiting),
            "running": len(engine.running),
            "kv_usage": engine.kv_usage(),
            "evictions": engine.pool.evictions,
        }
    )


def build_app(
    costs: EngineCosts, model: str = "emulated-llama-3.1-8b", seed: int = 0, name: str = "pod"
) -> web.Application:
    """The pod's app; its engine's step loop runs while the app does. ``name`` is each
    answer's ``system_fingerprint``, so a client behind any router sees which pod served it."""
    app = web.Application(client_max_size=64 << 20)
    engine = Engine(costs, seed=seed)
    app[ENGINE] = engine
    app[MODEL] = model
    app[NAME] = name

    async def step_loop(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(engine.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(step_loop)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/_control", control)
    app.router.add_get("/_stats", stats)
    return app


def main(argv: list[str] | None = None) -> None:
    defaults = EngineCosts()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--name", default="pod")
    parser.add_argument("--model", default="emulated-llama-3.1-8b")
    parser.add_argument("--kv-blocks", type=int, default=defaults.kv_blocks)
    parser.add_argument("--max-running", type=int, default=defaults.max_running)
    parser.add_argument("--slow-factor", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    costs = EngineCosts(kv_blocks=args.kv_blocks, max_running=args.max_running)

    async def run() -> None:
        app = build_app(costs, args.model, args.seed, args.name)
        app[ENGINE].faults.slow_factor = args.slow_factor
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port, reuse_address=True).start()
        print(f"llm pod {args.name} on http://{args.host}:{args.port}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(run())


if __name__ == "__main__":
    main()
