"""Token-level facts about an OpenAI-style answer, read from the bytes as they are relayed.

The handler writes each body chunk to the client first and only then hands it to
:meth:`AnswerObserver.feed`, so parsing never delays an event. The observer is incremental
(one pass over each byte; only the unfinished line of a stream is kept) and bounded (a line or
a non-streamed body over its limit stops the parsing, and the answer counts as unparsed). It
never changes a byte: a malformed stream is relayed as it came and only counted.

What it yields (:class:`AnswerReport`):
- time to first token: the first *content* event of a stream (a role-only delta or a keep-alive
  comment is not content), or the whole answer when it is not streamed;
- time per output token: (last content event - first) / (completion tokens - 1), streams only,
  after vLLM's definition (the first token's wait is TTFT's);
- prompt and completion tokens from the ``usage`` object (a stream's final usage chunk, sent
  with ``stream_options: {include_usage: true}``), else the counted content events, with the
  source saying which.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from gateway.jsonscan import parse_json

# A stream's events are small (a token or a few); a line this long is not an OpenAI stream.
MAX_EVENT_BYTES = 256 * 1024
# A non-streamed answer is parsed whole; past this it is relayed unparsed.
MAX_JSON_BYTES = 4 * 1024 * 1024


class TokenSource(enum.Enum):
    USAGE = "usage"  # the backend's own usage object
    EVENTS = "events"  # counted content events of a stream (one per token for vLLM and SGLang)


class Unparsed(enum.Enum):
    MALFORMED = "malformed"  # not JSON, or not the shape of an OpenAI answer
    TOO_LARGE = "too_large"  # a line or body over the parsing bound


class AnswerReport(NamedTuple):
    """What one relayed answer showed. Times in seconds from ``started_at``. (A named tuple:
    one per answer, built in one C call, where a frozen dataclass sets each field in turn.)"""

    streamed: bool
    model: str | None
    ttft_s: float | None
    tpot_s: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    token_source: TokenSource | None
    unparsed: Unparsed | None

    @property
    def is_answer(self) -> bool:
        """It looked like an OpenAI answer (it had ``choices``), so its numbers mean something."""
        return self.ttft_s is not None or self.completion_tokens is not None


class AnswerObserver:
    """Watches one response body of an OpenAI-style answer; see the module docstring.

    ``started_at`` is when the client's request arrived (so TTFT is what the client waited,
    queueing and retries included). When the answer names no model, the request's ``model``
    is used (the handler's :class:`RequestInfo` has it: the body is never parsed again here).
    """

    __slots__ = (
        "_buffer",
        "_content_events",
        "_first_at",
        "_last_at",
        "_model",
        "_prompt_tokens",
        "_saw_choices",
        "_started_at",
        "_streamed",
        "_unparsed",
        "_usage_completion",
    )

    def __init__(
        self,
        streamed: bool,
        started_at: float,
        model: str | None = None,
    ) -> None:
        self._streamed = streamed
        self._started_at = started_at
        self._model = model
        self._buffer = bytearray()
        self._content_events = 0
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._prompt_tokens: int | None = None
        self._usage_completion: int | None = None
        self._saw_choices = False
        self._unparsed: Unparsed | None = None

    def feed(self, chunk: bytes, now: float) -> None:
        """One relayed body chunk, received at ``now``."""
        if self._unparsed is not None:
            return
        if not self._streamed:
            if len(self._buffer) + len(chunk) > MAX_JSON_BYTES:
                self._give_up(Unparsed.TOO_LARGE)
            else:
                self._buffer += chunk
            return
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self._buffer:
                self._buffer += chunk[start:end]
                line = bytes(self._buffer)
                self._buffer.clear()
            else:
                line = chunk[start:end]
            self._line(line, now)
            if self._unparsed is not None:
                return
            start = end + 1
        if len(self._buffer) + len(chunk) - start > MAX_EVENT_BYTES:
            self._give_up(Unparsed.TOO_LARGE)
        else:
            self._buffer += chunk[start:]

    def finish(self, now: float) -> AnswerReport:
        """The body ended at ``now`` (or broke off): what it showed."""
        if self._unparsed is None:
            if self._streamed:
                if self._buffer.strip():
                    self._line(bytes(self._buffer), now)
            else:
                self._whole_body(now)
        self._buffer.clear()
        completion, source = self._completion_tokens()
        return AnswerReport(
            streamed=self._streamed,
            model=self._model,
            ttft_s=None if self._first_at is None else self._first_at - self._started_at,
            tpot_s=self._tpot(completion),
            prompt_tokens=self._prompt_tokens,
            completion_tokens=completion,
            token_source=source,
            unparsed=self._unparsed,
        )

    def _line(self, line: bytes, now: float) -> None:
        """One SSE line: only ``data:`` lines carry events; comments and ``event:`` are skipped."""
        if not line.startswith(b"data:"):
            return
        payload = line[5:].strip()
        if not payload or payload == b"[DONE]":
            return
        event = self._decode(payload)
        if event is None:
            return
        if _has_content(event.get("choices")):
            self._content_events += 1
            if self._first_at is None:
                self._first_at = now
            self._last_at = now

    def _whole_body(self, now: float) -> None:
        event = self._decode(bytes(self._buffer))
        if event is not None and self._saw_choices:
            self._first_at = self._last_at = now

    def _decode(self, payload: bytes) -> dict[str, Any] | None:
        """One JSON object of the answer; its model and usage are noted on the way."""
        try:
            event = parse_json(payload)
        except ValueError:  # malformed, bad UTF-8, or nested past the parser (TooDeep)
            self._give_up(Unparsed.MALFORMED)
            return None
        if not isinstance(event, dict):
            self._give_up(Unparsed.MALFORMED)
            return None
        if "choices" in event:
            self._saw_choices = True
        model = event.get("model")
        if isinstance(model, str) and model:
            self._model = model
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._prompt_tokens = _count(usage.get("prompt_tokens"), self._prompt_tokens)
            self._usage_completion = _count(usage.get("completion_tokens"), self._usage_completion)
        return event

    def _give_up(self, why: Unparsed) -> None:
        self._unparsed = why
        self._buffer.clear()

    def _completion_tokens(self) -> tuple[int | None, TokenSource | None]:
        if self._usage_completion is not None:
            return self._usage_completion, TokenSource.USAGE
        if self._streamed and self._content_events:
            return self._content_events, TokenSource.EVENTS
        return None, None

    def _tpot(self, completion: int | None) -> float | None:
        if not self._streamed or completion is None or completion < 2:
            return None
        if self._first_at is None or self._last_at is None:
            return None
        return (self._last_at - self._first_at) / (completion - 1)


def _has_content(choices: object) -> bool:
    """A choice carries generated output: chat ``delta.content`` (or reasoning, tool calls) or a
    completion's ``text``. vLLM's first chat event is a role-only delta, which is no token yet."""
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and (
            delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls")
        ):
            return True
    return False


def _count(value: object, previous: int | None) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return previous
