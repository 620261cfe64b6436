"""Token counts for rate limits: estimated from the request body, measured from the response.

The estimate at admission is the request's prompt tokens as :mod:`gateway.request_parse`
estimates them (characters / 4, the usual English-text ratio of BPE tokenizers) plus
``max_tokens`` (or ``max_completion_tokens``), else :data:`DEFAULT_COMPLETION_TOKENS`.
The answer corrects it (read by :class:`gateway.llm_stream.AnswerObserver` as it is
relayed): a JSON body's ``usage``, or for a stream the final usage chunk (OpenAI's
``stream_options.include_usage``), else the prompt estimate plus one token per content event.
"""

from __future__ import annotations

from gateway.llm_stream import AnswerReport
from gateway.request_info import RequestInfo

DEFAULT_COMPLETION_TOKENS = 256  # no max_tokens given: charge a typical answer, settle later


def estimate_tokens(info: RequestInfo) -> int | None:
    """Prompt + completion tokens this request will probably cost; None if the body is not
    an inference request (then rate limits count it as nothing but a request)."""
    if info.prompt is None and info.max_tokens is None:
        return None
    completion = info.max_tokens if info.max_tokens is not None else DEFAULT_COMPLETION_TOKENS
    return info.prompt_tokens + completion


def tokens_used(answer: AnswerReport, prompt_estimate: int) -> int | None:
    """Prompt + completion tokens of a relayed answer: its ``usage``, else the prompt estimate
    plus its counted content events; None when it told nothing (the estimate stands)."""
    if answer.completion_tokens is None:
        return None
    prompt = answer.prompt_tokens if answer.prompt_tokens is not None else prompt_estimate
    return prompt + answer.completion_tokens
