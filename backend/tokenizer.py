"""Text <-> token ids: a checkpoint's ``tokenizer.json`` when present, else raw UTF-8 bytes.

The byte-level fallback maps byte b to id b, so any text round-trips through the ``tiny`` preset
(vocabulary 260: 256 bytes plus BOS 256 and EOS 257) without a tokenizer file. Ids past the bytes
that are not special (nearly all of a random-weight ``1b`` or ``8b`` preset's 128,256) decode
to placeholder words, so every preset streams visible text.

Chat rendering follows vLLM's switches: ``add_generation_prompt`` (open an assistant turn) and
``continue_final_message`` (leave the final assistant message open, so generation continues
it): rendering a conversation plus a partial answer that way gives the same text as rendering
the conversation and appending the partial answer, which is how a broken stream is resumed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

BYTE_BOS, BYTE_EOS = 256, 257


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def render_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str: ...


def _plain_chat(
    messages: list[dict[str, str]], add_generation_prompt: bool, continue_final_message: bool
) -> str:
    """A neutral transcript for models without a chat template.

    A turn is ``role: content`` and a line break; the generation prompt is ``assistant:`` and
    a continued final message is ``role:`` directly followed by its content, which is what the
    generation prompt plus the generated text reads.
    """
    closed = messages[:-1] if continue_final_message else messages
    text = "".join(f"{m['role']}: {m['content']}\n" for m in closed)
    if continue_final_message:
        return text + f"{messages[-1]['role']}:{messages[-1]['content']}"
    return text + "assistant:" if add_generation_prompt else text


# Placeholder words for ids past the bytes: the id in base 16, one syllable per digit.
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "da", "fu", "go", "hi", "ju")
SYLLABLES += ("ke", "ly")


def placeholder_word(token_id: int) -> str:
    """A distinct, pronounceable word (with a leading space) for a non-byte id."""
    n = token_id - 256
    word = SYLLABLES[n % 16]
    while n >= 16:
        n //= 16
        word += SYLLABLES[n % 16]
    return " " + word


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; BOS and EOS decode to nothing, other ids to placeholder words."""

    def __init__(self, bos: int | None = BYTE_BOS, eos: tuple[int, ...] = (BYTE_EOS,)) -> None:
        self.bos_token_id = bos
        self.eos_token_ids = eos
        self._special = {*eos, *([bos] if bos is not None else [])}

    def encode(self, text: str) -> list[int]:
        prefix = [self.bos_token_id] if self.bos_token_id is not None else []
        return prefix + list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        parts: list[str] = []
        run = bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            if i in self._special:
                continue
            parts.append(run.decode("utf-8", errors="replace"))
            run.clear()
            parts.append(placeholder_word(i))
        parts.append(run.decode("utf-8", errors="replace"))
        return "".join(parts)

    def render_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        return _plain_chat(messages, add_generation_prompt, continue_final_message)


class HFTokenizer:
    """A ``tokenizers`` tokenizer, with the checkpoint's Jinja chat template when it has one."""

    def __init__(self, folder: Path, bos: int | None, eos: tuple[int, ...]) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_file(str(folder / "tokenizer.json"))
        self.bos_token_id = bos
        self.eos_token_ids = eos
        settings_file = folder / "tokenizer_config.json"
        settings: dict[str, Any] = (
            json.loads(settings_file.read_text()) if settings_file.exists() else {}
        )
        self._template: str | None = settings.get("chat_template")

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def render_chat(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        plain = _plain_chat(messages, add_generation_prompt, continue_final_message)
        if not isinstance(self._template, str):
            return plain
        try:
            import jinja2
        except ImportError:
            return plain
        template = jinja2.Environment().from_string(self._template)
        # encode() adds BOS itself, so the template must not add a second one.
        text = template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt and not continue_final_message,
            bos_token="",
        )
        if not continue_final_message:
            return text
        # As vLLM does: cut what the template closes the final message with (end of turn).
        final = messages[-1]["content"]
        at = text.rfind(final) if final else -1
        return text[: at + len(final)] if at >= 0 else text


def load_tokenizer(folder: Path | None, bos: int | None, eos: tuple[int, ...]) -> Tokenizer:
    """The checkpoint's tokenizer if ``folder`` has ``tokenizer.json``, else bytes."""
    if folder is not None and (folder / "tokenizer.json").exists():
        return HFTokenizer(folder, bos, eos)
    return ByteTokenizer(bos if bos is not None and bos >= 256 else None, eos)
