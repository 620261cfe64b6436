"""What the body says about a request, parsed once and read by every decision after it.

Policies see it (prefix affinity needs the prompt, work-based load its token counts), capacity
sees it (tenant, priority, cost), and it is parsed at most once per request, from the buffered
body only, so a request the gateway streams through is never held back to be read.
"""

from __future__ import annotations

from dataclasses import dataclass

# The output a request without max_tokens is expected to produce: about a median chat answer
# (ShareGPT's is ~200 tokens); it only weighs load, it never limits anything.
DEFAULT_OUTPUT_TOKENS = 256


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The request facts a decision may use; every field is optional (a non-JSON or streamed
    body gives none of the body's)."""

    model: str | None = None
    prompt: str | None = None  # completions' prompt, or chat messages flattened with roles
    prompt_tokens: int = 0  # an estimate: the pick must not wait for a tokenizer
    max_tokens: int | None = None  # max_tokens or max_completion_tokens
    stream: bool = False
    session: str | None = None  # a configured session header, or the body's ``user``
    blocks: tuple[int, ...] = ()  # the prompt's chained block hashes (gateway.affinity.blocks)
    chat: bool = False  # the prompt is chat ``messages`` flattened (else completions' prompt)

    @property
    def output_tokens(self) -> int:
        """The output this request may generate, for work-based load: ``max_tokens`` when
        given, else a typical chat answer (``DEFAULT_OUTPUT_TOKENS``)."""
        return self.max_tokens if self.max_tokens is not None else DEFAULT_OUTPUT_TOKENS


NO_INFO = RequestInfo()
