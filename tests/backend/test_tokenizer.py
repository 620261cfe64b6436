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


@pytest.mark.parametrize("preset", ["tiny", "1b", "8b"])
def test_every_id_of_a_preset_decodes_to_visible_text(preset: str) -> None:
    """Random-weight presets sample from their whole vocabulary: every id but BOS/EOS shows."""
    from backend.model import PRESETS

    config = PRESETS[preset]
    tok = load_tokenizer(None, config.bos_token_id, config.eos_token_ids)
    special = {config.bos_token_id, *config.eos_token_ids}
    words = [tok.decode([i]) for i in range(256, config.vocab_size) if i not in special]
    assert all(w.strip() and w.isprintable() and "\ufffd" not in w for w in words)
    assert len(set(words)) == len(words)  # one word per id
    assert tok.decode([config.bos_token_id, 104, 105, *config.eos_token_ids]) == "hi"


def test_bytes_and_placeholder_words_mix_in_one_text() -> None:
    tok = ByteTokenizer(bos=256, eos=(257,))
    assert tok.decode([104, 258, 195, 169, 259]) == "h mié ne"  # ids 258, 259: digits 2, 3


def test_continuing_a_final_message_renders_the_conversation_plus_the_partial_answer() -> None:
    tok = ByteTokenizer()
    history = [{"role": "user", "content": "hello"}]
    partial = [*history, {"role": "assistant", "content": " wor"}]
    assert tok.render_chat(partial, False, True) == tok.render_chat(history) + " wor"
    assert tok.render_chat(history, add_generation_prompt=False) == "user: hello\n"


def test_continuing_with_a_chat_template_cuts_the_end_of_turn(tmp_path: Path) -> None:
    pytest.importorskip("jinja2")
    template = (
        "{% for m in messages %}{{ m.role }} : {{ m.content }} </s> {% endfor %}"
        "{% if add_generation_prompt %}assistant :{% endif %}"
    )
    tok = load_tokenizer(save_word_tokenizer(tmp_path, template), bos=1, eos=(2,))
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    assert tok.render_chat(messages, False, True) == "user : hello </s> assistant : world"
