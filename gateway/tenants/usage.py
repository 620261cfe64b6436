"""Token counts for rate limits: estimated from the request body, measured from the response.

The estimate at admission is the prompt's characters / 4 (the usual English-text ratio of
BPE tokenizers) plus ``max_tokens`` (or ``max_completion_tokens``), else
:data:`DEFAULT_COMPLETION_TOKENS`. The response corrects it: a JSON body's ``usage``, or for a
stream the last event carrying ``usage`` (OpenAI's ``stream_options.include_usage``), else the
prompt estimate plus one token per streamed event.
"""

from __future__ import annotations

import json
from typing import Any

CHARS_PER_TOKEN = 4
DEFAULT_COMPLETION_TOKENS = 256  # no max_tokens given: charge a typical answer, settle later
MAX_JSON_BODY = 1024 * 1024  # larger bodies are not parsed for usage: the estimate stands
DONE = b"[DONE]"


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return _text_chars(value.get("content")) + _text_chars(value.get("text"))
    return 0


def prompt_tokens(payload: dict[str, Any]) -> int:
    chars = _text_chars(payload.get("messages")) + _text_chars(payload.get("prompt"))
    chars += _text_chars(payload.get("input"))
    return chars // CHARS_PER_TOKEN


def parse_body(body: bytes | None) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def estimate_tokens(payload: dict[str, Any] | None) -> int | None:
    """Prompt + completion tokens this request will probably cost; None if the body is not
    an inference request's JSON (then rate limits count it as nothing but a request)."""
    if payload is None:
        return None
    completion = payload.get("max_tokens", payload.get("max_completion_tokens"))
    if isinstance(completion, bool) or not isinstance(completion, int) or completion < 0:
        completion = DEFAULT_COMPLETION_TOKENS
    return prompt_tokens(payload) + completion


def usage_total(value: Any) -> int | None:
    """``total_tokens`` (or prompt + completion) of an OpenAI ``usage`` object."""
    if not isinstance(value, dict):
        return None
    total = value.get("total_tokens")
    if isinstance(total, int) and not isinstance(total, bool):
        return total
    parts = [value.get("prompt_tokens"), value.get("completion_tokens")]
    if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return int(parts[0]) + int(parts[1])  # type: ignore[arg-type]
    return None


class UsageMeter:
    """Fed the response body chunk by chunk; :meth:`tokens` is the count it told."""

    __slots__ = ("_buffer", "_events", "_overflow", "_prompt_tokens", "_reported", "_streaming")

    def __init__(self, streaming: bool, prompt_estimate: int) -> None:
        self._streaming = streaming
        self._prompt_tokens = prompt_estimate
        self._buffer = bytearray()
        self._events = 0
        self._reported: int | None = None
        self._overflow = False

    def feed(self, chunk: bytes) -> None:
        if not self._streaming:
            if len(self._buffer) + len(chunk) > MAX_JSON_BODY:
                self._overflow = True
                self._buffer.clear()
            elif not self._overflow:
                self._buffer += chunk
            return
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                if len(self._buffer) > MAX_JSON_BODY:
                    self._buffer.clear()  # one event larger than any real one: skip it
                return
            self._event(bytes(self._buffer[:end]))
            del self._buffer[: end + 2]

    def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == DONE:
                return
            self._events += 1
            if b'"usage"' in data:
                parsed = parse_body(data)
                total = usage_total(parsed.get("usage")) if parsed else None
                if total is not None:
                    self._reported = total

    def tokens(self) -> int | None:
        """Tokens used per the response; None when it did not tell (the estimate stands)."""
        if self._streaming:
            if self._reported is not None:
                return self._reported
            return self._prompt_tokens + self._events if self._events else None
        if self._overflow or b'"usage"' not in self._buffer:
            return None
        parsed = parse_body(bytes(self._buffer))
        return usage_total(parsed.get("usage")) if parsed else None
