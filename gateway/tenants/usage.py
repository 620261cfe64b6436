"""Token counts for rate limits: estimated from the request body, measured from the response.

The estimate at admission is the prompt's characters / 4 (the usual English-text ratio of
BPE tokenizers) plus ``max_tokens`` (or ``max_completion_tokens``), else
:data:`DEFAULT_COMPLETION_TOKENS`. The answer corrects it (read by
:class:`gateway.llm_stream.AnswerObserver` as it is relayed): a JSON body's ``usage``, or for a
stream the final usage chunk (OpenAI's ``stream_options.include_usage``), else the prompt
estimate plus one token per content event.
"""

from __future__ import annotations

from typing import Any

from gateway.jsonscan import load_json_bounded
from gateway.llm_stream import AnswerReport

CHARS_PER_TOKEN = 4
DEFAULT_COMPLETION_TOKENS = 256  # no max_tokens given: charge a typical answer, settle later


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


MAX_DEPTH = 32  # an inference request nests a few levels; deeper is not one to estimate


def parse_body(body: bytes | None) -> dict[str, Any] | None:
    """The request's JSON object, parsed within bounds (:mod:`gateway.jsonscan`), else None."""
    if not body:
        return None
    payload = load_json_bounded(body, MAX_DEPTH)
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


def tokens_used(answer: AnswerReport, prompt_estimate: int) -> int | None:
    """Prompt + completion tokens of a relayed answer: its ``usage``, else the prompt estimate
    plus its counted content events; None when it told nothing (the estimate stands)."""
    if answer.completion_tokens is None:
        return None
    prompt = answer.prompt_tokens if answer.prompt_tokens is not None else prompt_estimate
    return prompt + answer.completion_tokens
