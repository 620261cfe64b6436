"""Loading a checkpoint's tokenizer.json and chat template, and the byte fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")

from backend.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer  # noqa: E402

WORDS = ["<unk>", "<s>", "</s>", "hello", "world", "user", ":", "assistant"]


def save_word_tokenizer(folder: Path, template: str | None) -> Path:
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = tokenizers.decoders.WordPiece()  # joins words with spaces
    tok.save(str(folder / "tokenizer.json"))
    if template is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    return folder


def test_checkpoint_tokenizer_round_trips(tmp_path: Path) -> None:
    tok = load_tokenizer(save_word_tokenizer(tmp_path, None), bos=1, eos=(2,))
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode("hello world")
    assert ids == [3, 4] and tok.decode(ids) == "hello world"
    assert tok.render_chat([{"role": "user", "content": "hello"}]) == "user: hello\nassistant:"


def test_chat_template_is_rendered_with_generation_prompt(tmp_path: Path) -> None:
    pytest.importorskip("jinja2")
    template = (
        "{% for m in messages %}{{ m.role }} : {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    tok = load_tokenizer(save_word_tokenizer(tmp_path, template), bos=1, eos=(2,))
    text = tok.render_chat([{"role": "user", "content": "hello world"}])
    assert text == "user : hello world assistant :"
    assert tok.encode(text) == [5, 6, 3, 4, 7, 6]


def test_byte_fallback_without_tokenizer_file(tmp_path: Path) -> None:
    tok = load_tokenizer(tmp_path, bos=256, eos=(257,))
    assert isinstance(tok, ByteTokenizer)
    assert tok.encode("hé") == [256, 104, 195, 169]
    assert tok.decode([256, 104, 195, 169, 257]) == "hé"
