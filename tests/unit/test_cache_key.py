"""What the cache may answer, and which requests share an answer."""

from __future__ import annotations

import json

import pytest

from gateway.cache.key import cache_key, is_deterministic, json_object


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0, "n": 1}, True),
        ({"top_k": 1, "temperature": 0.8}, True),  # greedy whatever the temperature says
        ({}, False),  # OpenAI's default temperature is 1: sampled
        ({"temperature": 0.7}, False),
        ({"temperature": 0, "n": 2}, False),  # several choices differ from each other
        ({"temperature": "0"}, False),
        ({"temperature": False}, False),  # a bool is not a number here
        ({"top_k": 5}, False),
    ],
)
def test_only_greedy_single_choice_requests_are_deterministic(
    payload: dict[str, object], expected: bool
) -> None:
    assert is_deterministic(payload) is expected


def test_json_object_accepts_only_an_object() -> None:
    assert json_object(b' {"a": 1}') == {"a": 1}
    assert json_object(b"[1, 2]") is None
    assert json_object(b"{not json") is None
    assert json_object(b"") is None


def test_key_ignores_order_whitespace_and_delivery_fields() -> None:
    a = json_object(b'{"model": "m", "prompt": "hi", "temperature": 0, "user": "alice"}')
    b = json_object(
        json.dumps({"temperature": 0.0, "prompt": "hi", "model": "m"}, indent=2).encode()
    )
    assert a is not None and b is not None
    assert cache_key("r", "/v1/completions", "t", a) == cache_key("r", "/v1/completions", "t", b)


def test_key_separates_what_changes_the_answer() -> None:
    payload = {"model": "m", "prompt": "hi", "temperature": 0}
    key = cache_key("r", "/v1/completions", "t", payload)
    assert key != cache_key("r", "/v1/completions", "t", {**payload, "prompt": "ho"})
    assert key != cache_key("r", "/v1/completions", "t", {**payload, "model": "n"})
    assert key != cache_key("other", "/v1/completions", "t", payload)
    assert key != cache_key("r", "/v1/chat/completions", "t", payload)


def test_key_separates_tenants_unless_shared() -> None:
    payload = {"prompt": "hi", "temperature": 0}
    assert cache_key("r", "/p", "a", payload) != cache_key("r", "/p", "b", payload)
    assert cache_key("r", "/p", "", payload) != cache_key("r", "/p", None, payload)
    assert cache_key("r", "/p", None, payload) == cache_key("r", "/p", None, dict(payload))


def test_streamed_and_whole_answers_are_kept_apart() -> None:
    payload = {"prompt": "hi", "temperature": 0}
    streamed = cache_key("r", "/p", "", {**payload, "stream": True})
    whole = cache_key("r", "/p", "", {**payload, "stream": False})
    assert streamed.streamed and not whole.streamed
    assert streamed.digest != whole.digest
    assert whole == cache_key("r", "/p", "", payload)
