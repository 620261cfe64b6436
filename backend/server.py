"""The OpenAI-compatible HTTP API of the backend (aiohttp), on rank 0.

Handlers only translate: they check the request (``backend.protocol``), tokenise, hand a
:class:`~backend.engine.Request` to the engine and relay its tokens as JSON or server-sent
events. Every response, errors included, carries ``X-Queue-Depth`` (waiting + running), which
is what a tailgate gateway reads to steer traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.config import BackendConfig
from backend.engine import Engine, QueueFull, Request, TokenEvent
from backend.metrics import BackendMetrics
from backend.protocol import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    ApiError,
    GenerationParams,
    chat_body,
    chat_chunk,
    completion_body,
    error_body,
    parse_request,
    resolve_max_tokens,
    usage,
    usage_chunk,
)
from backend.text import TextStream
from backend.tokenizer import Tokenizer

log = logging.getLogger("tailgate.backend.server")

QUEUE_DEPTH_HEADER = "X-Queue-Depth"
RETRY_AFTER_S = 1
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class BackendState:
    """What the handlers share: one object, built at start-up and passed down."""

    config: BackendConfig
    engine: Engine
    tokenizer: Tokenizer
    metrics: BackendMetrics
    vocab_size: int
    rng: random.Random
    ready: bool = False
    created_s: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Generation:
    """One request's bookkeeping while its tokens stream back."""

    request: Request
    events: asyncio.Queue[TokenEvent]
    text: TextStream
    submitted_s: float
    completion_tokens: int = 0
    finish_reason: str | None = None


STATE = web.AppKey("state", BackendState)


def _state(request: web.Request) -> BackendState:
    return request.app[STATE]


async def _read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from exc


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with an OpenAI-style error object."""
    try:
        return await handler(request)
    except ApiError as err:
        response = web.json_response(err.body(), status=err.status)
        if err.status == 503:
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return web.json_response(error_body(exc.reason, kind), status=exc.status)
    except Exception:
        log.exception("unhandled error on %s", request.path)
        return web.json_response(error_body("internal error", "server_error"), status=500)


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Injected latency and errors for demos and load tests; both off by default."""
    state = _state(request)
    if request.path.startswith("/v1/") and request.path != "/v1/models":
        if state.config.fault_latency_s > 0:
            await asyncio.sleep(state.config.fault_latency_s)
        if state.rng.random() < state.config.fault_error_rate:
            raise ApiError(500, "injected fault", code="injected_fault", type_="server_error")
    return await handler(request)


async def _add_queue_depth(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers[QUEUE_DEPTH_HEADER] = str(_request.app[STATE].engine.queue_depth)


def _prompt_ids(state: BackendState, params: GenerationParams) -> list[int]:
    if isinstance(params.prompt, list):
        if any(not 0 <= t < state.vocab_size for t in params.prompt):
            raise ApiError(400, f"token ids must be in 0..{state.vocab_size - 1}", param="prompt")
        return params.prompt
    if params.messages is not None:
        text = state.tokenizer.render_chat(
            params.messages, params.add_generation_prompt, params.continue_final_message
        )
        return state.tokenizer.encode(text)
    assert params.prompt is not None
    return state.tokenizer.encode(params.prompt)


def _deliverer(events: asyncio.Queue[TokenEvent]) -> Callable[[TokenEvent], None]:
    """Hand engine-thread events to the loop; once the loop is closed nobody is listening."""
    loop = asyncio.get_running_loop()

    def deliver(event: TokenEvent) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(events.put_nowait, event)

    return deliver


def _start(state: BackendState, params: GenerationParams) -> Generation:
    ids = _prompt_ids(state, params)
    cfg = state.config
    max_tokens = resolve_max_tokens(params.max_tokens, len(ids), cfg.max_model_len, cfg.max_tokens)
    events: asyncio.Queue[TokenEvent] = asyncio.Queue()
    request = Request(
        prompt_ids=ids,
        max_tokens=max_tokens,
        sampling=params.sampling,
        ignore_eos=params.ignore_eos,
        on_event=_deliverer(events),
    )
    try:
        state.engine.submit(request)
    except QueueFull as exc:
        raise ApiError(503, f"server busy: {exc}", code="queue_full", type_="server_error") from exc
    return Generation(request, events, TextStream(state.tokenizer, params.stop), time.monotonic())


async def _deltas(state: BackendState, gen: Generation) -> AsyncIterator[str]:
    """Text pieces as tokens arrive; sets ``gen.finish_reason`` before the last one."""
    while True:
        event = await gen.events.get()
        if event.finish_reason == "error":
            gen.finish_reason = "error"
            return
        now = time.monotonic()
        if gen.completion_tokens == 0:
            state.metrics.first_token(now - gen.submitted_s)
        gen.completion_tokens += 1
        state.metrics.generated_tokens.inc()
        assert event.token_id is not None
        delta = gen.text.push(event.token_id)
        if gen.text.stopped:
            state.engine.cancel(gen.request)
            gen.finish_reason = "stop"
        elif event.finish_reason is not None:
            gen.finish_reason = event.finish_reason
            delta += gen.text.flush()
        if gen.finish_reason is not None:
            state.metrics.latency_s.observe(now - gen.submitted_s)
            yield delta
            return
        if delta:
            yield delta


def _sse(obj: dict[str, Any] | str) -> bytes:
    payload = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


@dataclass(frozen=True)
class Reply:
    """The OpenAI object shapes of one response: completion or chat, whole or chunked."""

    rid: str
    created: int
    model: str
    chat: bool

    @classmethod
    def new(cls, model: str, chat: bool) -> Reply:
        prefix = "chatcmpl" if chat else "cmpl"
        return cls(f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model, chat)

    def whole(self, text: str, finish: str | None, use: dict[str, int]) -> dict[str, Any]:
        shape = chat_body if self.chat else completion_body
        return shape(self.rid, self.created, self.model, text, finish, use)

    def opening(self) -> dict[str, Any] | None:
        """Chat streams announce the assistant role first; completions have no opener."""
        if not self.chat:
            return None
        role = {"role": "assistant", "content": ""}
        return chat_chunk(self.rid, self.created, self.model, role, None)

    def chunk(self, delta: str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            content = {"content": delta} if delta else {}
            return chat_chunk(self.rid, self.created, self.model, content, finish)
        return completion_body(self.rid, self.created, self.model, delta, finish, None)

    def usage_chunk(self, use: dict[str, int]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return usage_chunk(self.rid, self.created, self.model, obj, use)


async def _answer_whole(state: BackendState, gen: Generation, reply: Reply) -> web.Response:
    text = "".join([d async for d in _deltas(state, gen)])
    if gen.finish_reason == "error" and gen.completion_tokens == 0:
        # Nothing was generated (engine stopping or failed): safe for a caller to retry.
        raise ApiError(503, "engine unavailable", type_="server_error", code="engine_unavailable")
    if gen.finish_reason == "error":
        raise ApiError(500, "generation failed", type_="server_error", code="engine_error")
    use = usage(len(gen.request.prompt_ids), gen.completion_tokens)
    return web.json_response(reply.whole(text, gen.finish_reason, use))


async def _answer_stream(
    request: web.Request, gen: Generation, reply: Reply, include_usage: bool
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    if (opening := reply.opening()) is not None:
        await response.write(_sse(opening))
    async for delta in _deltas(_state(request), gen):
        await response.write(_sse(reply.chunk(delta, gen.finish_reason)))
    if gen.finish_reason == "error":
        error = error_body("generation failed", "server_error", code="engine_error")
        await response.write(_sse(error))
    elif include_usage:
        use = usage(len(gen.request.prompt_ids), gen.completion_tokens)
        await response.write(_sse(reply.usage_chunk(use)))
    await response.write(_sse("[DONE]"))
    await response.write_eof()
    return response


async def _respond(
    request: web.Request, params: GenerationParams, chat: bool
) -> web.StreamResponse:
    state = _state(request)
    gen = _start(state, params)
    reply = Reply.new(state.config.model_name, chat)
    try:
        if params.stream:
            return await _answer_stream(request, gen, reply, params.include_usage)
        return await _answer_whole(state, gen, reply)
    finally:
        if not gen.request.finished:
            state.engine.cancel(gen.request)  # client left, stop string hit, or an error


async def completions(request: web.Request) -> web.StreamResponse:
    params = parse_request(await _read_json(request), COMPLETION_FIELDS, "prompt")
    return await _respond(request, params, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    params = parse_request(await _read_json(request), CHAT_FIELDS, "messages")
    return await _respond(request, params, chat=True)


async def models(request: web.Request) -> web.Response:
    state = _state(request)
    card = {
        "id": state.config.model_name,
        "object": "model",
        "created": state.created_s,
        "owned_by": "tailgate",
    }
    return web.json_response({"object": "list", "data": [card]})


async def health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    if not _state(request).ready:
        raise ApiError(
            503, "model is not loaded and warmed up yet", code="not_ready", type_="server_error"
        )
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(_state(request).metrics.registry)
    response = web.Response(body=body)
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


def build_app(state: BackendState) -> web.Application:
    app = web.Application(middlewares=[error_middleware, fault_middleware])
    app[STATE] = state
    app.on_response_prepare.append(_add_queue_depth)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
