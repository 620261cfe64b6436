"""The OpenAI object shapes of the emulated pod's answers: whole, streamed, and usage.

Field for field what vLLM sends for ``/v1/completions`` and ``/v1/chat/completions``,
``usage.prompt_tokens_details.cached_tokens`` included (the prefix-cache hit of the request).
``system_fingerprint`` (which OpenAI defines as the serving configuration, and vLLM leaves
empty) names the pod that served it: routers pass the body through untouched, so the client
sees where each turn of a conversation went.
"""

from __future__ import annotations

import time
import uuid

from loadtests.llm.engine import Sequence


def _usage(seq: Sequence) -> dict[str, object]:
    return {
        "prompt_tokens": len(seq.prompt),
        "completion_tokens": len(seq.output),
        "total_tokens": len(seq.prompt) + len(seq.output),
        "prompt_tokens_details": {"cached_tokens": seq.cached_tokens},
    }


class Reply:
    """The OpenAI object shapes of one request, completions or chat."""

    def __init__(self, model: str, chat: bool, fingerprint: str | None = None) -> None:
        self.model = model
        self.chat = chat
        self.fingerprint = fingerprint
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        self.created = int(time.time())

    def _object(self, choices: list[dict[str, object]], chunk: bool) -> dict[str, object]:
        kind = "chat.completion" if self.chat else "text_completion"
        kind += ".chunk" if chunk and self.chat else ""
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }

    def chunk(self, text: str, finish: str | None) -> dict[str, object]:
        if self.chat:
            choice: dict[str, object] = {"index": 0, "delta": {"content": text}}
        else:
            choice = {"index": 0, "text": text}
        return self._object([{**choice, "finish_reason": finish}], chunk=True)

    def role_chunk(self) -> dict[str, object]:
        """The chat stream's first event: the role, no content yet."""
        delta = {"role": "assistant", "content": ""}
        return self._object([{"index": 0, "delta": delta, "finish_reason": None}], chunk=True)

    def usage_chunk(self, seq: Sequence) -> dict[str, object]:
        return {**self._object([], chunk=True), "usage": _usage(seq)}

    def whole(self, seq: Sequence) -> dict[str, object]:
        text = "".join(" " + t for t in seq.output)
        if self.chat:
            choice: dict[str, object] = {"message": {"role": "assistant", "content": text}}
        else:
            choice = {"text": text}
        body = self._object([{"index": 0, **choice, "finish_reason": "length"}], chunk=False)
        return {**body, "usage": _usage(seq)}
