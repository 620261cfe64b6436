"""Continuing a broken event stream: whole events only at the seam, the continuation request."""

from __future__ import annotations

import json

from gateway.resume import (
    Transcript,
    continuation_body,
    is_opening_role_only,
    read_to_first_token,
    without_opening_role,
)


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def text_event(text: str) -> bytes:
    return event({"choices": [{"index": 0, "text": text}]})


def test_only_whole_events_go_out_and_a_partial_one_is_held_back() -> None:
    transcript = Transcript(limit=1 << 20)
    first, second = text_event("Hello"), text_event(" world")
    assert transcript.feed(first + second[:7]) == first
    assert transcript.feed(second[7:]) == second
    assert transcript.streamed() == ("Hello world", 2, False)


def test_crlf_framed_events_are_whole_events_too() -> None:
    transcript = Transcript(limit=1 << 20)
    framed = text_event("a").replace(b"\n\n", b"\r\n\r\n")
    assert transcript.feed(framed) == framed
    assert transcript.streamed() == ("a", 1, False)


def test_a_finished_stream_says_so() -> None:
    transcript = Transcript(limit=1 << 20)
    done = event({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    transcript.feed(text_event("a") + done)
    assert transcript.streamed()[2] is True


def test_a_stream_over_the_limit_cannot_be_resumed_but_still_flows() -> None:
    transcript = Transcript(limit=10)
    chunk = text_event("long enough")
    assert transcript.feed(chunk) == chunk
    assert transcript.overflowed


def test_chat_deltas_are_read_and_the_opening_role_event_is_dropped_from_a_continuation() -> None:
    opening = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    token = event({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    transcript = Transcript(limit=1 << 20)
    transcript.feed(opening + token)
    assert transcript.streamed() == ("Hi", 1, False)
    assert without_opening_role(opening + token) == token
    assert without_opening_role(token) == token


def test_a_completion_continues_after_its_streamed_text_with_fewer_tokens() -> None:
    body = json.dumps({"prompt": "Once", "max_tokens": 10, "stream": True}).encode()
    continued = json.loads(continuation_body(body, " upon a", 2) or b"")
    assert continued == {"prompt": "Once upon a", "max_tokens": 8, "stream": True}


def test_a_chat_continues_its_partial_assistant_message() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    body = json.dumps({"messages": messages, "max_completion_tokens": 5}).encode()
    continued = json.loads(continuation_body(body, "Hel", 1) or b"")
    assert continued["messages"][-1] == {"role": "assistant", "content": "Hel"}
    assert continued["continue_final_message"] is True
    assert continued["add_generation_prompt"] is False
    assert continued["max_completion_tokens"] == 4


def test_what_cannot_be_continued() -> None:
    assert continuation_body(b"not json", "x", 1) is None
    assert continuation_body(json.dumps({"prompt": "a", "n": 2}).encode(), "x", 1) is None
    assert continuation_body(json.dumps({"prompt": "a", "max_tokens": 2}).encode(), "xy", 2) is None
    assert continuation_body(json.dumps({"inputs": "tgi"}).encode(), "x", 1) is None


def test_only_a_role_only_opening_event_is_no_first_token() -> None:
    opening = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    token = event({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    assert is_opening_role_only(opening)
    assert not is_opening_role_only(opening + token)  # the token came with it
    assert not is_opening_role_only(token)
    assert not is_opening_role_only(event({"choices": [{"text": "t"}]}))  # completions
    assert not is_opening_role_only(b"")


class Chunks:
    """A body that arrives in the given chunks, then ends."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def readany(self) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


ROLE = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
TOKEN = event({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})


async def test_the_read_ahead_holds_the_opening_role_event_until_the_first_token() -> None:
    assert await read_to_first_token(Chunks(ROLE, TOKEN, TOKEN)) == ROLE + TOKEN
    assert await read_to_first_token(Chunks(ROLE + TOKEN)) == ROLE + TOKEN
    assert await read_to_first_token(Chunks(TOKEN, TOKEN)) == TOKEN  # completions: no role
    assert await read_to_first_token(Chunks(ROLE)) == ROLE  # the stream ended there
