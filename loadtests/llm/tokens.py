"""The emulator's tokenizer and chat template: one token per whitespace-separated word.

Exactness matters more than realism here: a client that sends back the previous answer
must produce the very tokens the pod generated, so multi-turn histories hit the blocks the
pod cached. Generated words are a pure function of the prompt, so every peer of a run sees
the same answers, and a stream continued on another pod (the partial answer sent back) gives
the same text as an unbroken one.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence

VOCABULARY = tuple(f"w{i}" for i in range(4096))
ASSISTANT = "<|assistant|>"


def tokenize(text: str) -> list[str]:
    return text.split()


def chat_tokens(messages: Iterable[Mapping[str, object]]) -> list[str]:
    """``messages`` under a minimal chat template: a role marker, then the content's words,
    then the assistant marker that the answer follows (so an answer quoted back in the next
    turn extends the cached prefix exactly)."""
    tokens: list[str] = []
    for message in messages:
        tokens.append(f"<|{message.get('role', 'user')}|>")
        content = message.get("content", "")
        tokens.extend(tokenize(content if isinstance(content, str) else ""))
    tokens.append(ASSISTANT)
    return tokens


def continued_chat_tokens(messages: Iterable[Mapping[str, object]]) -> list[str]:
    """vLLM's ``continue_final_message`` (with ``add_generation_prompt: false``): the template
    without the closing assistant marker, so the answer continues the final (assistant)
    message instead of starting a new one."""
    return chat_tokens(messages)[:-1]


def answer_start(prompt: Sequence[str]) -> tuple[int, int]:
    """The seed and the first index of the answer that follows ``prompt``. A prompt that ends
    inside an assistant turn (its marker, then generated words, as a continuation sends it)
    goes on with that answer where it stopped, as a greedy model would: the words after the
    marker are the answer's first ones."""
    for back, token in enumerate(reversed(prompt)):
        if token == ASSISTANT:
            marker = len(prompt) - back
            return answer_seed(prompt[:marker]), back
    return answer_seed(prompt), 0


def answer_seed(prompt: Sequence[str]) -> int:
    """What fixes a prompt's answer: a checksum of its last 64 tokens."""
    return zlib.crc32(" ".join(prompt[-64:]).encode())


def answer_token(seed: int, index: int) -> str:
    """The ``index``-th generated word of the answer to a prompt with this seed."""
    return VOCABULARY[(seed + 7919 * index) % len(VOCABULARY)]
