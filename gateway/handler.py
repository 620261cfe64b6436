"""The request path: route, pick a backend, forward with safe retries, stream the answer back.

    client -> route match -> group (canary split) -> pick (policy) -> try (proxy.send)
           -> retry on another backend if safe and within budget -> relay the response

Retries (tenacity drives the loop and the jittered back-off) happen only before any response
byte has gone to the client, only for configured conditions (``retries.retry_on``), only while
the request body can be resent, for non-idempotent methods only if the request never reached a
backend (unless the route opts in), and only while the retry budget allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_random_exponential

from gateway import proxy
from gateway.attempt import Attempt
from gateway.config.model import GatewayConfig
from gateway.endpoint import Endpoint
from gateway.errors import error_response, shed_response
from gateway.headers import header_bytes, request_id_from
from gateway.pending_queue import Priority, Refused
from gateway.proxy import BodyTooLarge, RequestBody, UpstreamFailure
from gateway.routing import Route, model_of
from gateway.runtime import Runtime
from gateway.selection import NoPick, retry_allowed, select_endpoint
from gateway.tenants import Refusal, Ticket
from gateway.tenants.usage import UsageMeter
from gateway.upstream import UpstreamError, UpstreamResponse

access_log = logging.getLogger("tailgate.access")
log = logging.getLogger("tailgate")


class Shed(Exception):
    """The gateway will not send this request anywhere (503 with Retry-After)."""

    def __init__(self, reason: str, message: str, priority: Priority = Priority.STANDARD) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.priority = priority


class RetryableTry(Exception):
    """This try failed in a way that will be retried on another backend."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class RequestContext:
    """One client request on its way through the gateway: what it is and what became of it."""

    request: web.BaseRequest
    config: GatewayConfig  # one config for the whole request, even if a reload lands meanwhile
    request_id: str
    started_at: float
    route: Route | None = None
    group: str = "default"
    body: RequestBody | None = None
    backend: str = "-"
    status: int = 0
    tried: list[str] = field(default_factory=list)
    response_started: bool = False
    ticket: Ticket | None = None  # tenants (issue 15): tenant, class, token charge

    @property
    def route_name(self) -> str:
        return self.route.name if self.route is not None else "-"


class ProxyHandler:
    """The aiohttp handler of the public listener."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        rt = self.runtime
        config = rt.config
        rid = request_id_from(request.headers, config.headers.request_id)
        ctx = RequestContext(request, config, rid, rt.clock())
        response: web.StreamResponse | None = None
        try:
            response = await self._handle(ctx)
            return response
        finally:
            self._finish(ctx, response)

    async def _handle(self, ctx: RequestContext) -> web.StreamResponse:
        request, config, rid = ctx.request, ctx.config, ctx.request_id
        if header_bytes(request.headers) > config.limits.max_header_size:
            return error_response(431, "headers_too_large", "request headers too large", rid)
        length = request.content_length
        if length is not None and length > config.limits.max_body:
            return error_response(413, "body_too_large", "request body too large", rid)
        ctx.body = body = RequestBody(request, config.limits.max_body)
        try:
            await body.buffer_if_small(config.retries.buffer_limit)
        except (aiohttp.ClientPayloadError, ConnectionError):
            return error_response(400, "bad_request", "request body broke off", rid)
        model = model_of(body.buffered) if self.runtime.router.needs_model else None
        ctx.route = route = self.runtime.router.match(request.path, request.headers, model)
        ctx.group = route.pick_group(self.runtime.rng)
        # -- tenants (issue 15): who it is for, its class, its rate limits (401 / 429) --------
        gate = self.runtime.tenant_gate
        ticket = await gate.admit(request.headers, body.buffered, self.runtime.clock())
        if isinstance(ticket, Refusal):
            return error_response(
                ticket.status, ticket.kind, ticket.message, rid, ticket.headers, ticket.code
            )
        ctx.ticket = ticket
        # -- end tenants ---------------------------------------------------------------------
        self.runtime.retry_budget.record_request(self.runtime.clock())
        try:
            async with asyncio.timeout(config.timeouts.total):
                return await self._forward(ctx)
        except TimeoutError:
            if ctx.response_started:
                _abort(request)
                return web.Response(status=ctx.status)  # never sent; the connection is closed
            return error_response(504, "upstream_timeout", "route timeout exceeded", rid)
        except Shed as shed:
            self.runtime.metrics.shed.labels(route.name, shed.reason).inc()
            self.runtime.metrics.shed_by_priority.labels(shed.priority.label, shed.reason).inc()
            return shed_response(shed.message, rid)
        except BodyTooLarge:
            return error_response(413, "body_too_large", "request body too large", rid)
        finally:  # tenants (issue 15): correct the token charge from the response's usage
            await gate.settle(ticket, ctx.response_started, self.runtime.clock())

    async def _forward(self, ctx: RequestContext) -> web.StreamResponse:
        try:  # the first try runs bare: most requests never need the retry machinery
            return await self._try_once(ctx, 1)
        except RetryableTry:
            pass  # _try_once already checked that a retry is allowed and spent the budget
        retries = ctx.config.retries
        backoff = wait_random_exponential(multiplier=retries.backoff_base, max=retries.backoff_max)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(retries.attempts - 1),
            wait=backoff,
            before=_first_backoff(backoff),
            retry=retry_if_exception_type(RetryableTry),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._try_once(ctx, attempt.retry_state.attempt_number + 1)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _try_once(self, ctx: RequestContext, number: int) -> web.StreamResponse:
        """Try number ``number``: pick a backend, send, and relay or raise RetryableTry."""
        rt, request, config = self.runtime, ctx.request, ctx.config
        body = ctx.body
        assert body is not None and rt.upstream is not None
        assert ctx.ticket is not None
        endpoint = await self._acquire(ctx.group, ctx.tried, config, ctx.ticket)
        ctx.tried.append(endpoint.name)
        ctx.backend = endpoint.name
        headers = proxy.upstream_headers(
            request, ctx.request_id, config.headers.request_id, endpoint.url
        )
        # tenants (issue 15): the client's key stays here unless configured; a backend's own
        # key replaces it
        auth = rt.tenant_gate.upstream_authorization(
            request.headers.get("Authorization"), endpoint.name
        )
        headers.popall("Authorization", None)
        if auth is not None:
            headers["Authorization"] = auth
        with Attempt(endpoint, rt.clock, rt.metrics, rt.record_outcome, rt.capacity_freed) as att:
            try:
                upstream = await proxy.send(
                    rt.upstream,
                    request,
                    endpoint.url,
                    headers,
                    body,
                    config.timeouts.connect,
                    config.timeouts.per_try,
                )
            except UpstreamFailure as failure:
                if failure.kind is proxy.FailureKind.CLIENT_BODY:
                    att.client_gone()
                    return error_response(
                        400, "bad_request", "request body broke off", ctx.request_id
                    )
                att.failed(failure.kind.value)
                if self._may_retry(ctx, failure.kind.value, failure.reached_upstream, number):
                    raise RetryableTry(failure.kind.value) from None
                return self._failure_response(failure, ctx)
            except BodyTooLarge:
                att.client_gone()
                raise
            try:
                streaming = upstream.content_type == "text/event-stream"
                reported = upstream.headers.get(config.balancer.queue_depth.header)
                att.got_headers(upstream.status, streaming, reported)
                status = upstream.status
                if status in config.retries.retry_on and self._may_retry(
                    ctx, str(status), True, number
                ):
                    raise RetryableTry(str(status))
                return await self._relay(ctx, upstream, att, endpoint)
            finally:
                upstream.release()

    def _may_retry(
        self, ctx: RequestContext, reason: str, reached_upstream: bool, number: int
    ) -> bool:
        rt = self.runtime
        route = ctx.route
        assert route is not None and ctx.body is not None
        condition: str | int = int(reason) if reason.isdigit() else reason
        allowed = retry_allowed(
            condition,
            reached_upstream,
            ctx.request.method,
            ctx.body.replayable,
            number,
            ctx.config.retries,
            route.retry_non_idempotent,
            rt.retry_budget,
            rt.clock(),
        )
        if allowed is None:
            rt.metrics.retry_budget_exhausted.labels(route.name).inc()
            return False
        if allowed:
            rt.metrics.retries.labels(route.name, reason).inc()
        return allowed

    async def _acquire(
        self, group: str, tried: list[str], config: GatewayConfig, ticket: Ticket
    ) -> Endpoint:
        """An endpoint of ``group`` that may take this try now, waiting in the queue while all
        are at ``max_requests_per_backend``; raises :class:`Shed` when there is none."""
        rt = self.runtime
        if ticket.priority is Priority.SHEDDABLE and self._backends_report_pressure(group):
            raise Shed("sheddable", "every backend reports a long queue", ticket.priority)
        # Tenants (issue 15): one deadline from arrival, however often the request is woken;
        # and no overtaking: while others wait (or were just woken), a newcomer queues too.
        deadline = rt.admission.queue_deadline(rt.clock())
        woken = False
        while True:
            if not woken and (len(rt.capacity_waiters) or rt.handoffs):
                woken = await self._wait_for_room(ticket, deadline)
                continue
            picked = select_endpoint(
                rt.fleet,
                rt.policy_for(group),
                group,
                tried,
                config.limits.max_requests_per_backend,
                rt.clock(),
                rt.rng,
            )
            if woken:
                rt.handoffs -= 1  # the room it was woken for is taken (or lost): hand-off done
                woken = False
                if picked is NoPick.NO_BACKEND:
                    rt.capacity_freed()  # the next in line learns it too, without waiting
            if picked is NoPick.NO_BACKEND:
                raise Shed("no_backend", f"no healthy backend available for group {group!r}")
            if picked is NoPick.ALL_FULL:
                woken = await self._wait_for_room(ticket, deadline)
                continue
            return picked

    def _backends_report_pressure(self, group: str) -> bool:
        """Tenants (issue 15): does every candidate report more queued than sheddable allows?"""
        threshold = self.runtime.config.admission.sheddable_queue_depth
        if threshold <= 0:
            return False
        now = self.runtime.clock()
        candidates, _ = self.runtime.fleet.candidates(group, now)
        return bool(candidates) and all(e.signals.queue_depth(now) > threshold for e in candidates)

    async def _wait_for_room(self, ticket: Ticket, deadline: float) -> bool:
        """Tenants (issue 15): wait in the pending queue (by class, fair across tenants) until
        woken for room (True: the caller owes :attr:`Runtime.handoffs` one), else raise Shed."""
        rt = self.runtime
        queue, priority = rt.capacity_waiters, ticket.priority
        admission = rt.config.admission
        if priority is Priority.SHEDDABLE and len(queue) >= admission.sheddable_max_pending:
            raise Shed("sheddable", "all backends are at capacity", priority)
        if rt.admission.settings.queue_timeout_s <= 0:
            raise Shed("overloaded", "all backends are at capacity and the queue is full", priority)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        pushed = queue.push(waiter, ticket.tenant.name, priority, ticket.cost)
        if pushed is Refused.FULL:
            raise Shed("overloaded", "all backends are at capacity and the queue is full", priority)
        if pushed is not None and not pushed.done():
            pushed.set_result(False)  # a sheddable request makes room for a higher class
        rt.metrics.pending.inc()
        try:
            async with asyncio.timeout(rt.admission.wait_left_s(deadline, rt.clock())):
                room = await waiter
        except BaseException as exc:  # timed out or cancelled, maybe just as room was given
            if waiter.done() and not waiter.cancelled() and waiter.result():
                rt.handoffs -= 1
                rt.capacity_freed()  # pass the room on to the next in line
            if isinstance(exc, TimeoutError):
                rt.admission.timed_out()
                message = "no backend capacity freed up in time"
                raise Shed("queue_timeout", message, priority) from None
            raise
        finally:
            rt.metrics.pending.dec()
            queue.remove(waiter)
            if not waiter.done():
                waiter.cancel()
        if not room:
            raise Shed("displaced", "made room for a request of a higher priority", priority)
        return True

    async def _relay(
        self,
        ctx: RequestContext,
        upstream: UpstreamResponse,
        att: Attempt,
        endpoint: Endpoint,
    ) -> web.StreamResponse:
        """Stream the upstream response to the client chunk by chunk, as it arrives."""
        request, config = ctx.request, ctx.config
        headers = proxy.response_headers(upstream)
        headers[config.headers.request_id] = ctx.request_id
        if config.headers.expose_backend:
            label = endpoint.name if config.headers.expose_backend_address else endpoint.public_name
            headers["X-Tailgate-Backend"] = label
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        if upstream.content_length is not None and "Transfer-Encoding" not in upstream.headers:
            response.content_length = upstream.content_length
        ctx.status = upstream.status
        if self.runtime.draining:
            response.force_close()
        try:
            await response.prepare(request)
            ctx.response_started = True
            assert ctx.ticket is not None
            meter = self.runtime.tenant_gate.watch_response(
                ctx.ticket, upstream.content_type == "text/event-stream"
            )
            await self._stream_body(request, response, upstream, att, endpoint, meter)
        except ConnectionError:  # the client left (aiohttp's reset error is one too)
            att.client_gone()
            upstream.close()
        return response

    async def _stream_body(
        self,
        request: web.BaseRequest,
        response: web.StreamResponse,
        upstream: UpstreamResponse,
        att: Attempt,
        endpoint: Endpoint,
        meter: UsageMeter,
    ) -> None:
        """Relay body chunks as they arrive; an upstream break cuts the client off too."""
        while True:
            try:
                chunk = await upstream.readany()
            except UpstreamError as exc:
                att.failed("reset")
                log.warning("upstream %s broke off mid-response: %s", endpoint.name, exc)
                _abort(request)
                return
            if not chunk:
                break
            meter.feed(chunk)  # tenants (issue 15): usage for the token limit
            await response.write(chunk)
        await response.write_eof()

    def _failure_response(self, failure: UpstreamFailure, ctx: RequestContext) -> web.Response:
        kind = failure.kind
        if kind is proxy.FailureKind.TIMEOUT:
            return error_response(
                504, "upstream_timeout", "upstream did not answer in time", ctx.request_id
            )
        if kind is proxy.FailureKind.CONNECT:
            return error_response(
                502, "upstream_connect_failure", "could not connect to upstream", ctx.request_id
            )
        return error_response(
            502, "upstream_reset", "upstream closed the connection", ctx.request_id
        )

    def _finish(self, ctx: RequestContext, response: web.StreamResponse | None) -> None:
        request, config = ctx.request, ctx.config
        rt = self.runtime
        status = response.status if response is not None else 499  # client went away
        if response is not None and not ctx.response_started:
            response.headers.setdefault(config.headers.request_id, ctx.request_id)
        elapsed = rt.clock() - ctx.started_at
        route = ctx.route_name
        rt.metrics.requests_for(route, ctx.backend, str(status)).inc()
        rt.metrics.request_duration_for(route).observe(elapsed)
        if config.logging.access_log and access_log.isEnabledFor(logging.INFO):
            access_log.info(
                json.dumps(
                    {
                        "id": ctx.request_id,
                        "method": request.method,
                        "path": request.path,
                        "route": route,
                        "backend": ctx.backend,
                        "status": status,
                        "latency_ms": round(elapsed * 1000, 3),
                        "tries": len(ctx.tried),
                    },
                    separators=(",", ":"),
                )
            )


def _first_backoff(
    backoff: wait_random_exponential,
) -> Callable[[RetryCallState], Awaitable[None]]:
    """tenacity waits only between its own attempts; the retries here follow a first try made
    outside it, so the first of them waits too, drawn from the same jittered back-off."""

    async def before(retry_state: RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            await asyncio.sleep(backoff(retry_state))

    return before


def _abort(request: web.BaseRequest) -> None:
    """Close the client connection so a cut-off response is never mistaken for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.close()
