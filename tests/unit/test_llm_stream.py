"""The answer observer: TTFT, TPOT and tokens from OpenAI-style bytes, however they are cut."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.llm_stream import (
    MAX_EVENT_BYTES,
    MAX_JSON_BYTES,
    AnswerObserver,
    TokenSource,
    Unparsed,
)


def sse(event: dict[str, Any] | str) -> bytes:
    payload = event if isinstance(event, str) else json.dumps(event)
    return f"data: {payload}\n\n".encode()


def chat_chunk(content: str | None = None, role: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"model": "llama-3", "choices": [{"index": 0, "delta": delta}]}


USAGE = {"model": "llama-3", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


def test_chat_stream_with_usage_gives_ttft_tpot_and_tokens_from_usage() -> None:
    observer = AnswerObserver(streamed=True, started_at=100.0)
    observer.feed(sse(chat_chunk(role="assistant")), 100.1)  # role only: not a token yet
    observer.feed(b": keep-alive comment\n\n", 100.2)
    observer.feed(sse(chat_chunk("Hel")), 100.5)
    observer.feed(sse(chat_chunk("lo")), 100.6)
    observer.feed(sse(chat_chunk("!")), 100.9)
    observer.feed(sse(USAGE) + sse("[DONE]"), 101.0)
    report = observer.finish(101.0)
    assert report.ttft_s == pytest.approx(0.5)
    assert report.tpot_s == pytest.approx((100.9 - 100.5) / 2)
    assert (report.prompt_tokens, report.completion_tokens) == (7, 3)
    assert report.token_source is TokenSource.USAGE
    assert report.model == "llama-3"
    assert report.unparsed is None


def test_stream_without_usage_counts_content_events() -> None:
    observer = AnswerObserver(streamed=True, started_at=0.0)
    for i, at in enumerate((0.2, 0.3, 0.4, 0.5)):
        observer.feed(sse({"choices": [{"index": 0, "text": f"t{i}"}]}), at)
    observer.feed(sse("[DONE]"), 0.6)
    report = observer.finish(0.6)
    assert report.completion_tokens == 4
    assert report.token_source is TokenSource.EVENTS
    assert report.prompt_tokens is None
    assert report.ttft_s == pytest.approx(0.2)
    assert report.tpot_s == pytest.approx(0.1)


def _whole_stream() -> bytes:
    events = [chat_chunk(role="assistant"), *(chat_chunk(w) for w in ("a", "b", "c")), USAGE]
    return b"".join(sse(e) for e in events) + sse("[DONE]")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(_whole_stream())), max_size=20))
def test_where_the_chunks_are_cut_does_not_change_the_counts(cuts: list[int]) -> None:
    body = _whole_stream()
    bounds = [0, *sorted(cuts), len(body)]
    observer = AnswerObserver(streamed=True, started_at=0.0)
    for start, end in itertools.pairwise(bounds):
        observer.feed(body[start:end], 1.0)
    report = observer.finish(1.0)
    assert (report.completion_tokens, report.prompt_tokens) == (3, 7)
    assert report.unparsed is None


def test_crlf_line_endings_are_understood() -> None:
    observer = AnswerObserver(streamed=True, started_at=0.0)
    observer.feed(sse(chat_chunk("x")).replace(b"\n", b"\r\n"), 0.1)
    observer.feed(sse(chat_chunk("y")).replace(b"\n", b"\r\n"), 0.2)
    assert observer.finish(0.3).completion_tokens == 2


def test_an_answer_nested_past_the_parser_is_unparsed_not_a_crash() -> None:
    observer = AnswerObserver(streamed=False, started_at=0.0)
    observer.feed(b"[" * 100_000 + b"]" * 100_000, 0.1)
    report = observer.finish(0.2)
    assert report.unparsed is Unparsed.MALFORMED and not report.is_answer


def test_a_malformed_stream_is_counted_unparsed_and_parsing_stops() -> None:
    observer = AnswerObserver(streamed=True, started_at=0.0)
    observer.feed(sse(chat_chunk("ok")), 0.1)
    observer.feed(b"data: {not json\n\n", 0.2)
    observer.feed(sse(chat_chunk("later")), 0.3)
    report = observer.finish(0.4)
    assert report.unparsed is Unparsed.MALFORMED
    assert report.completion_tokens == 1  # what was understood before it broke
    assert report.ttft_s == pytest.approx(0.1)


def test_an_overlong_line_stops_parsing_without_holding_it() -> None:
    observer = AnswerObserver(streamed=True, started_at=0.0)
    piece = b"x" * (64 * 1024)
    observer.feed(b"data: ", 0.1)
    for _ in range(MAX_EVENT_BYTES // len(piece) + 2):
        observer.feed(piece, 0.1)
    assert observer.finish(0.2).unparsed is Unparsed.TOO_LARGE
    assert len(observer._buffer) == 0


def test_non_streamed_answer_ttft_is_the_whole_answer_and_tokens_come_from_usage() -> None:
    body = json.dumps(
        {
            "model": "m",
            "choices": [{"message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
    ).encode()
    observer = AnswerObserver(streamed=False, started_at=10.0)
    observer.feed(body[:10], 10.1)
    observer.feed(body[10:], 10.2)
    report = observer.finish(10.25)
    assert report.ttft_s == pytest.approx(0.25)
    assert report.tpot_s is None
    assert (report.prompt_tokens, report.completion_tokens) == (5, 2)
    assert report.token_source is TokenSource.USAGE


def test_non_streamed_body_over_the_bound_is_unparsed() -> None:
    observer = AnswerObserver(streamed=False, started_at=0.0)
    observer.feed(b"{" + b" " * MAX_JSON_BYTES, 0.1)
    report = observer.finish(0.2)
    assert report.unparsed is Unparsed.TOO_LARGE
    assert not report.is_answer


def test_json_that_is_no_answer_yields_nothing() -> None:
    observer = AnswerObserver(streamed=False, started_at=0.0)
    observer.feed(b'{"object": "list", "data": []}', 0.1)
    report = observer.finish(0.1)
    assert not report.is_answer
    assert report.unparsed is None


def test_model_falls_back_to_the_requests_when_the_answer_names_none() -> None:
    observer = AnswerObserver(streamed=True, started_at=0.0, model="qwen")
    observer.feed(sse({"choices": [{"delta": {"content": "a"}}]}), 0.1)
    assert observer.finish(0.2).model == "qwen"
    named = AnswerObserver(streamed=True, started_at=0.0, model="qwen")
    named.feed(sse(chat_chunk("a")), 0.1)
    assert named.finish(0.2).model == "llama-3"  # the answer's own name wins


def test_one_token_stream_has_no_time_per_output_token() -> None:
    observer = AnswerObserver(streamed=True, started_at=0.0)
    observer.feed(sse(chat_chunk("only")), 0.3)
    report = observer.finish(0.4)
    assert report.completion_tokens == 1
    assert report.tpot_s is None
