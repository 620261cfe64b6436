"""A prompt as chained block hashes: block i's hash covers every character before its end.

A backend's prefix cache (vLLM's automatic prefix caching, SGLang's radix tree) reuses the KV
of a prompt's longest cached *prefix*, so what matters is not which blocks two prompts share
but how far they agree from the start. Chaining makes that a property of one hash: two prompts
share block i's hash only if they agree on all of blocks 0..i (up to a 64-bit collision).

Blocks are cut by UTF-8 bytes, not tokens: the gateway must not wait for a tokenizer, and a
fixed character span is the same on every replica. ``BLOCK_CHARS = 256`` is about 64 tokens of
English (``CHARS_PER_TOKEN = 4``): fine enough that one chat turn is a few blocks, coarse
enough that a 4,000-token prompt is ~60 hashes (~20 us, once per request, in the handler).
The seed is the model, so two models never share a block.

The hash is BLAKE2b (stdlib, deterministic across processes, unlike ``hash()`` under hash
randomisation), so every gateway replica computes the same chain for the same prompt.
"""

from __future__ import annotations

import hashlib

BLOCK_CHARS = 256
CHARS_PER_TOKEN = 4.0


def block_hashes(prompt: str, model: str | None, block_chars: int = BLOCK_CHARS) -> tuple[int, ...]:
    """The chained hashes of the prompt's full blocks (a trailing partial block is not cached
    by the backends either, so it is not hashed)."""
    data = prompt.encode("utf-8", "surrogatepass")
    if len(data) < block_chars:
        return ()  # no full block: nothing a backend caches, nothing to hash
    previous = hashlib.blake2b((model or "").encode(), digest_size=8).digest()
    hashes: list[int] = []
    for end in range(block_chars, len(data) + 1, block_chars):
        previous = hashlib.blake2b(
            data[end - block_chars : end], digest_size=8, key=previous
        ).digest()
        hashes.append(int.from_bytes(previous, "little"))
    return tuple(hashes)


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate of ``text``'s token count (at least 1 for any text)."""
    return max(1, round(len(text) / CHARS_PER_TOKEN)) if text else 0
