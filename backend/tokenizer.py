"""Text <-> token ids: a checkpoint's ``tokenizer.json`` when present, else raw UTF-8 bytes.

The byte-level fallback maps byte b to id b, so any text round-trips through the ``tiny`` preset
(vocabulary 260: 256 bytes plus BOS 256 and EOS 257) without a tokenizer file.
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

    def render_chat(self, messages: list[dict[str, str]]) -> str: ...


def _plain_chat(messages: list[dict[str, str]]) -> str:
    """A neutral transcript for models without a chat template."""
    turns = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return turns + "assistant:"


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; ids past 255 (BOS, EOS, padding) decode to nothing."""

    def __init__(self, bos: int | None = BYTE_BOS, eos: tuple[int, ...] = (BYTE_EOS,)) -> None:
        self.bos_token_id = bos
        self.eos_token_ids = eos

    def encode(self, text: str) -> list[int]:
        prefix = [self.bos_token_id] if self.bos_token_id is not None else []
        return prefix + list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        return _plain_chat(messages)


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

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not isinstance(self._template, str):
            return _plain_chat(messages)
        try:
            import jinja2
        except ImportError:
            return _plain_chat(messages)
        template = jinja2.Environment().from_string(self._template)
        # encode() adds BOS itself, so the template must not add a second one.
        return template.render(messages=messages, add_generation_prompt=True, bos_token="")


def load_tokenizer(folder: Path | None, bos: int | None, eos: tuple[int, ...]) -> Tokenizer:
    """The checkpoint's tokenizer if ``folder`` has ``tokenizer.json``, else bytes."""
    if folder is not None and (folder / "tokenizer.json").exists():
        return HFTokenizer(folder, bos, eos)
    return ByteTokenizer(bos if bos is not None and bos >= 256 else None, eos)
