"""Resuming an event stream that broke mid-way on another backend. Bytes in, bytes out (one
helper reads ahead, to a stream's first token).

When a backend dies after a stream's first byte, the client has part of the answer. Instead of
cutting it off, the gateway asks another backend to *continue*: the same request with the text
already streamed appended (completions: ``prompt + text``; chat: the partial assistant message
with vLLM's ``continue_final_message: true, add_generation_prompt: false``) and ``max_tokens``
reduced by the tokens already sent, then splices the new stream into the client's. For greedy
requests the client sees the same text as an unbroken run would (up to tokenization at the
seam: the text is re-tokenized as part of the prompt); a sampled request continues with a
valid but different sample from that point on.

:class:`Transcript` is what makes the seam clean: it lets only whole events through to the
client (a partial event is held back, so the client never sees half an event that the
continuation would then repeat) and keeps a bounded copy of them to read the streamed text
from, parsed only if the stream breaks.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.cache import ChunkSource

_EVENT_END = b"\n\n"
_EVENT_END_CRLF = b"\r\n\r\n"
_MAX_HELD = 64 * 1024  # an "event" longer than this is not SSE as inference servers speak it


class Transcript:
    """The whole events relayed so far (bounded), and the partial one held back."""

    __slots__ = ("_held", "_sent", "_size", "limit", "overflowed")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # bytes of events kept; beyond it the stream cannot be resumed
        self._sent: list[bytes] = []
        self._size = 0
        self._held = b""
        self.overflowed = False

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of ``chunk`` (with what was held back) that end a whole event."""
        data = self._held + chunk if self._held else chunk
        cut = _last_event_end(data)
        if cut == 0:
            if len(data) <= _MAX_HELD:
                self._held = data
                return b""
            self.overflowed = True  # pass it on unchanged; this stream cannot be resumed
            cut = len(data)
        ready, self._held = data[:cut], data[cut:]
        if not self.overflowed:
            self._size += len(ready)
            if self._size > self.limit:
                self.overflowed = True
                self._sent.clear()
            else:
                self._sent.append(ready)
        return ready

    def flush(self) -> bytes:
        """What is held back, at the stream's clean end (a last event without its blank line)."""
        held, self._held = self._held, b""
        return held

    def streamed(self) -> tuple[str, int, bool]:
        """The text sent so far, the number of events that carried text (a token each, as
        vLLM, SGLang and TGI stream), and whether the stream already finished."""
        parts: list[str] = []
        tokens = 0
        finished = False
        for event in _events(b"".join(self._sent)):
            if event == "[DONE]":
                finished = True
                continue
            choice = _first_choice(event)
            if choice is None:
                continue
            text = choice.get("text")
            if text is None:
                delta = choice.get("delta")
                text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                parts.append(text)
                tokens += 1
            if choice.get("finish_reason"):
                finished = True
        return "".join(parts), tokens, finished


def continuation_body(original: bytes, text: str, tokens_sent: int) -> bytes | None:
    """The request that continues ``original`` after ``text``; None if it cannot be continued
    (not a single-choice completions or chat request, or no tokens left to generate)."""
    try:
        request = json.loads(original)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(request, dict) or request.get("n", 1) != 1:
        return None
    request = dict(request)
    for key in ("max_tokens", "max_completion_tokens"):
        limit = request.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            if limit - tokens_sent <= 0:
                return None
            request[key] = limit - tokens_sent
    if isinstance(request.get("prompt"), str):
        request["prompt"] = request["prompt"] + text
    elif isinstance(request.get("messages"), list):
        request["messages"] = [*request["messages"], {"role": "assistant", "content": text}]
        request["continue_final_message"] = True
        request["add_generation_prompt"] = False
    else:
        return None
    return json.dumps(request).encode()


def without_opening_role(ready: bytes) -> bytes:
    """A continuation's first whole events without the chat stream's opening event (the
    role, no text): the client already had one from the first backend."""
    end = ready.find(_EVENT_END)
    if end < 0:
        return ready
    first, rest = ready[: end + 2], ready[end + 2 :]
    for event in _events(first):
        choice = _first_choice(event)
        delta = choice.get("delta") if choice is not None else None
        if isinstance(delta, dict) and "role" in delta and not delta.get("content"):
            return rest
    return ready


def is_opening_role_only(chunk: bytes) -> bool:
    """Is ``chunk`` nothing but a chat stream's opening event (the role, no text)? vLLM-like
    servers may send it before prefill, so it is no first token: a TTFT measured to it would
    read every backend as equally fast and every prompt as free to prefill."""
    return bool(chunk) and not without_opening_role(chunk).strip()


async def read_to_first_token(source: ChunkSource) -> bytes:
    """A stream's first chunks up to and with its first token (or its end): what a hedge
    race is decided on. A chat stream's opening role event, which vLLM-like servers send
    before prefill, is held with them rather than taken for the answer: a try stuck in its
    queue or its prefill has sent it too, and TTFT counts from the first token."""
    held = await source.readany()
    while held and is_opening_role_only(held):
        more = await source.readany()
        if not more:
            break
        held += more
    return held


def _last_event_end(data: bytes) -> int:
    """Where the last whole event in ``data`` ends (0: none does)."""
    lf = data.rfind(_EVENT_END)
    crlf = data.rfind(_EVENT_END_CRLF)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _events(data: bytes) -> list[str]:
    out = []
    for block in data.replace(b"\r\n", b"\n").split(_EVENT_END):
        lines = [ln[5:].strip() for ln in block.split(b"\n") if ln.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines).decode("utf-8", "replace"))
    return out


def _first_choice(event: str) -> dict[str, Any] | None:
    try:
        payload = json.loads(event)
    except ValueError:
        return None
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None
