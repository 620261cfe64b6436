"""OpenAI-compatible request checking and response bodies: pure functions, no I/O.

Unknown or ill-typed fields are refused (400) rather than silently ignored, so a client learns
at once that a parameter it relies on does nothing here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backend.sampling import SamplingParams


class ApiError(Exception):
    """An error answered with ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type_,
        )

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _is_prompt(v: Any) -> bool:
    token_ids = isinstance(v, list) and v and all(_is_int(t) for t in v)
    return isinstance(v, str) or bool(token_ids) or (_is_str_list(v) and len(v) == 1)


def _is_stop(v: Any) -> bool:
    return isinstance(v, str) or (_is_str_list(v) and len(v) <= 4)


def _is_content(v: Any) -> bool:
    if isinstance(v, str):
        return True
    return isinstance(v, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in v
    )


def _is_messages(v: Any) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant", "developer")
            and _is_content(m.get("content"))
            and set(m) <= {"role", "content", "name"}
            for m in v
        )
    )


def _is_stream_options(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and set(v) <= {"include_usage"}
        and isinstance(v.get("include_usage", False), bool)
    )


Check = Callable[[Any], bool]
_COMMON: dict[str, tuple[Check, str]] = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "max_tokens": (_is_int, "an integer"),
    "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number in [0, 2]"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (_is_stream_options, "an object {include_usage: bool}"),
    "seed": (_is_int, "an integer"),
    "stop": (_is_stop, "a string or a list of up to 4 strings"),
    "n": (lambda v: v == 1, "1 (one choice per request)"),
    "user": (lambda v: isinstance(v, str), "a string"),
    # Extension (as in vLLM): keep generating past EOS, for load tests of a fixed length.
    "ignore_eos": (lambda v: isinstance(v, bool), "a boolean"),
}
COMPLETION_FIELDS = {**_COMMON, "prompt": (_is_prompt, "a string, one-string list or token ids")}
CHAT_FIELDS = {
    **_COMMON,
    "messages": (_is_messages, "a non-empty list of {role, content} messages"),
    "max_completion_tokens": (_is_int, "an integer"),
    # Extensions (as in vLLM): open an assistant turn (default), or continue the final message.
    "add_generation_prompt": (lambda v: isinstance(v, bool), "a boolean"),
    "continue_final_message": (lambda v: isinstance(v, bool), "a boolean"),
}


@dataclass(frozen=True)
class GenerationParams:
    """A checked request, before tokenisation."""

    prompt: str | list[int] | None
    messages: list[dict[str, str]] | None
    max_tokens: int | None
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]
    ignore_eos: bool = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False


def _flatten(content: str | list[dict[str, str]]) -> str:
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def parse_request(
    body: Any, fields: dict[str, tuple[Check, str]], required: str
) -> GenerationParams:
    """Check ``body`` against ``fields``; raise :class:`ApiError` (400) naming the bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    for name, value in body.items():
        if name not in fields:
            raise ApiError(400, f"unknown field {name!r}", param=name, code="unknown_field")
        if value is None:
            continue
        check, expected = fields[name]
        if not check(value):
            raise ApiError(400, f"{name!r} must be {expected}", param=name, code="invalid_type")
    if body.get(required) is None:
        raise ApiError(400, f"{required!r} is required", param=required, code="missing_field")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    messages = body.get("messages")
    if messages is not None:
        messages = [{"role": m["role"], "content": _flatten(m["content"])} for m in messages]
    add_generation_prompt = body.get("add_generation_prompt") is not False
    continue_final_message = bool(body.get("continue_final_message"))
    if continue_final_message and add_generation_prompt:
        raise ApiError(
            400,
            "continue_final_message needs add_generation_prompt: false",
            param="add_generation_prompt",
            code="invalid_value",
        )
    if continue_final_message and messages[-1]["role"] != "assistant":
        raise ApiError(
            400,
            "continue_final_message needs a final assistant message to continue",
            param="messages",
            code="invalid_value",
        )
    stop = body.get("stop") or ()
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    temperature = body.get("temperature")
    return GenerationParams(
        prompt=prompt,
        messages=messages,
        max_tokens=max_tokens,
        sampling=SamplingParams(
            temperature=1.0 if temperature is None else float(temperature),
            top_p=float(body.get("top_p") or 1.0),
            seed=body.get("seed"),
        ),
        stream=bool(body.get("stream")),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        ignore_eos=bool(body.get("ignore_eos")),
        add_generation_prompt=add_generation_prompt,
        continue_final_message=continue_final_message,
    )


def resolve_max_tokens(
    requested: int | None, prompt_len: int, max_model_len: int, max_tokens_limit: int
) -> int:
    """Tokens to generate, or a 400 when the prompt or the request cannot fit the context."""
    if prompt_len > max_model_len:
        raise ApiError(
            400,
            f"prompt has {prompt_len} tokens; this model's maximum context is {max_model_len}",
            param="prompt",
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_len
    if requested is None:
        return max(1, min(max_tokens_limit, room))
    if not 1 <= requested <= max_tokens_limit:
        raise ApiError(
            400,
            f"max_tokens must be in 1..{max_tokens_limit}",
            param="max_tokens",
            code="out_of_range",
        )
    if requested > max(room, 1):
        raise ApiError(
            400,
            f"prompt ({prompt_len} tokens) plus max_tokens ({requested}) exceeds the maximum "
            f"context of {max_model_len}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    rid: str, created: int, model: str, text: str, finish: str | None, use: dict[str, int] | None
) -> dict[str, Any]:
    """A ``text_completion`` object; a stream chunk when ``use`` is None."""
    body: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if use is not None:
        body["usage"] = use
    return body


def chat_body(
    rid: str, created: int, model: str, text: str, finish: str | None, use: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": use,
    }


def chat_chunk(
    rid: str, created: int, model: str, delta: dict[str, str], finish: str | None
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(
    rid: str, created: int, model: str, obj: str, use: dict[str, int]
) -> dict[str, Any]:
    """The extra last chunk a stream carries when ``stream_options.include_usage`` is set."""
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": use,
    }
