"""The request-path core's retry rules, on a real Runtime with a fake clock (no I/O)."""

from __future__ import annotations

import random

import pytest

from gateway.config import parse_config
from gateway.exchange import Exchange, RetryVerdict, open_exchange
from gateway.failures import Failure
from gateway.request_info import NO_INFO
from gateway.runtime import Runtime

BACKENDS = "backends: [{url: 'http://10.0.0.1:8000'}, {url: 'http://10.0.0.2:8000'}]\n"


def runtime(extra: str = "") -> Runtime:
    return Runtime(parse_config(BACKENDS + extra), clock=lambda: 0.0, rng=random.Random(1))


def tried_once(rt: Runtime, method: str, path: str) -> Exchange:
    exchange = open_exchange(rt, method, path, {}, NO_INFO, 0.0)
    endpoint = exchange.admit(0.0)
    assert endpoint is not None and not isinstance(endpoint, Failure)
    exchange.start_try(endpoint)
    return exchange


@pytest.mark.parametrize("what", [Failure.CONNECT, Failure.RESET, Failure.TIMEOUT, 500, 502, 503])
def test_inference_posts_are_retried_once_by_default(what: Failure | int) -> None:
    exchange = tried_once(runtime(), "POST", "/v1/chat/completions")
    assert exchange.retry(what, True, 0.0) is RetryVerdict.RETRY


@pytest.mark.parametrize("path", ["/v2/models/llama/infer", "/generate", "/v1/embeddings"])
def test_every_default_inference_path_is_safe_to_resend(path: str) -> None:
    exchange = tried_once(runtime(), "POST", path)
    assert exchange.retry(Failure.RESET, True, 0.0) is RetryVerdict.RETRY


def test_a_post_elsewhere_is_resent_only_if_it_never_reached_a_backend() -> None:
    rt = runtime()
    assert tried_once(rt, "POST", "/orders").retry(Failure.RESET, True, 0.0) is RetryVerdict.ANSWER
    assert tried_once(rt, "POST", "/orders").retry(500, True, 0.0) is RetryVerdict.ANSWER
    assert tried_once(rt, "POST", "/orders").retry(Failure.CONNECT, True, 0.0) is (
        RetryVerdict.RETRY
    )


def test_get_is_always_resendable() -> None:
    exchange = tried_once(runtime(), "GET", "/anything")
    assert exchange.retry(Failure.TIMEOUT, True, 0.0) is RetryVerdict.RETRY


@pytest.mark.parametrize("status", [400, 404, 429])
def test_a_4xx_is_never_retried(status: int) -> None:
    exchange = tried_once(runtime("retries: {attempts: 3}\n"), "GET", "/")
    assert exchange.retry(status, True, 0.0) is RetryVerdict.ANSWER


def test_the_same_failure_on_two_backends_is_answered() -> None:
    exchange = tried_once(runtime("retries: {attempts: 4}\n"), "POST", "/v1/completions")
    assert exchange.retry(500, True, 0.0) is RetryVerdict.RETRY
    exchange.start_try(exchange.runtime.fleet.endpoints["10.0.0.2:8000"])
    assert exchange.retry(500, True, 0.0) is RetryVerdict.ANSWER  # the request's own fault


def test_client_faults_and_broken_responses_are_never_retried() -> None:
    for failure in (Failure.CLIENT_BODY, Failure.CLIENT_BODY_TIMEOUT, Failure.BROKEN_RESPONSE):
        exchange = tried_once(runtime(), "GET", "/")
        assert exchange.retry(failure, True, 0.0) is RetryVerdict.ANSWER


def test_no_retry_without_a_replayable_body_or_past_attempts() -> None:
    assert tried_once(runtime(), "GET", "/").retry(500, False, 0.0) is RetryVerdict.ANSWER
    exchange = tried_once(runtime("retries: {attempts: 1}\n"), "GET", "/")
    assert exchange.retry(500, True, 0.0) is RetryVerdict.ANSWER


def test_a_spent_budget_says_so() -> None:
    rt = runtime("retries: {budget_percent: 0, min_retries_per_second: 0}\n")
    exchange = tried_once(rt, "GET", "/")
    assert exchange.retry(502, True, 0.0) is RetryVerdict.BUDGET_EXHAUSTED


def test_retry_on_can_leave_a_condition_out() -> None:
    rt = runtime("retries: {retry_on: [connect-failure]}\n")
    assert tried_once(rt, "GET", "/").retry(500, True, 0.0) is RetryVerdict.ANSWER
    assert tried_once(rt, "GET", "/").retry(Failure.CONNECT, True, 0.0) is RetryVerdict.RETRY


def test_backoff_is_full_jitter_under_the_cap() -> None:
    exchange = tried_once(
        runtime("retries: {backoff_base: 100ms, backoff_max: 150ms}\n"), "GET", "/"
    )
    draws = [exchange.backoff_s(random.Random(seed)) for seed in range(200)]
    assert min(draws) >= 0.0 and max(draws) <= 0.1
    exchange.start_try(exchange.runtime.fleet.endpoints["10.0.0.2:8000"])
    assert max(exchange.backoff_s(random.Random(seed)) for seed in range(200)) <= 0.15
