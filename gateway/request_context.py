"""One client request on its way through the gateway, and the answers every step may give.

The handler's steps (``gateway.tries``, ``gateway.hedged_race``, ``gateway.relay``,
``gateway.relay_resume``) share this one record of the request instead of arguments threaded
through each call: what it is, the one config it runs under, and what became of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.cache import Lookup
from gateway.config.model import GatewayConfig
from gateway.errors import error_response
from gateway.exchange import Exchange
from gateway.failures import Failure, consequence
from gateway.llm_stream import AnswerReport
from gateway.proxy import RequestBody
from gateway.runtime import Runtime
from gateway.tenants import Admitted
from gateway.tracing import RequestTrace


class Shed(Exception):
    """The gateway will not send this request anywhere (503 with Retry-After)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.value)
        self.failure = failure


class RetryableTry(Exception):
    """This try failed in a way that will be retried on another backend."""


@dataclass(slots=True)
class RequestContext:
    """One client request on its way through the gateway: what it is and what became of it."""

    request: web.BaseRequest
    runtime: Runtime
    config: GatewayConfig  # one config for the whole request, even if a reload lands meanwhile
    request_id: str
    started_at: float
    exchange: Exchange | None = None
    body: RequestBody | None = None
    backend: str = "-"
    status: int = 0
    response_started: bool = False
    trace: RequestTrace | None = None  # None when tracing is off
    model: str | None = None  # the request body's "model", when it was read
    model_undecided: str | None = None  # why routing could not read the body's model
    cache: Lookup | None = None  # None: the cache is off for this request's route
    admitted: Admitted | None = None  # tenants: tenant, class, token charge
    answer: AnswerReport | None = None  # what the relayed answer showed (tokens)
    failure: Failure | None = None  # what broke a response already under way
    stream_break: str | None = None  # how a body that broke after its first byte ended

    @property
    def route_name(self) -> str:
        return self.exchange.route.name if self.exchange is not None else "-"

    def count_break(self, result: str) -> None:
        """A body broke after its first byte: the metric, and the access log's
        ``stream_break`` (a resumed stream is a success to the client, not to the backend)."""
        self.stream_break = result
        self.runtime.metrics.broken_streams.labels(self.route_name, result).inc()

    @property
    def tries(self) -> int:
        return self.exchange.tries if self.exchange is not None else 0


def failure_response(failure: Failure, request_id: str) -> web.Response:
    """The client's answer to a failure, from the one table."""
    rule = consequence(failure)
    return error_response(rule.status, rule.error_type, rule.message, request_id)


def client_failure(ctx: RequestContext, failure: Failure) -> web.Response:
    """The answer to a body the client broke off or stopped sending; the connection closes
    (its framing is lost)."""
    ctx.runtime.metrics.client_body_failures.labels(failure.value).inc()
    response = failure_response(failure, ctx.request_id)
    response.force_close()
    return response


def abort(request: web.BaseRequest) -> None:
    """Close the client connection so a cut-off response is never mistaken for a whole one."""
    transport = request.transport
    if transport is not None:
        transport.abort()  # not close(): a client that stopped reading would keep it open
