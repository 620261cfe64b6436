"""The request's facts, parsed once from a buffered JSON body; anything else gives none."""

import json

from gateway.affinity.blocks import BLOCK_CHARS, block_hashes
from gateway.request_info import DEFAULT_OUTPUT_TOKENS, NO_INFO
from gateway.request_parse import MAX_BRACKETS, continued_prompt, parse_request


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_chat_is_the_whole_conversation_in_order_with_roles() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": "again"},
    ]
    info = parse_request(body(model="m", messages=messages, stream=True), {})
    assert info.prompt == "system: be brief\nuser: hi\nassistant: hello\nuser: again\n"
    assert info.model == "m" and info.stream is True
    assert info.prompt_tokens == round(len(info.prompt) / 4)


def test_completions_prompt_and_token_limits() -> None:
    info = parse_request(body(prompt="x" * 400, max_tokens=7), {})
    assert info.prompt == "x" * 400 and info.prompt_tokens == 100 and info.max_tokens == 7
    newer = parse_request(body(prompt=["first", "second"], max_completion_tokens=9), {})
    assert newer.prompt == "first" and newer.max_tokens == 9
    assert parse_request(body(prompt="p", max_tokens=True), {}).max_tokens is None
    assert parse_request(body(prompt="p"), {}).output_tokens == DEFAULT_OUTPUT_TOKENS


def test_session_is_the_configured_header_else_the_user_field() -> None:
    doc = body(prompt="p", user="alice")
    assert parse_request(doc, {"X-Session": "s1"}, "X-Session").session == "s1"
    assert parse_request(doc, {}, "X-Session").session == "alice"
    assert parse_request(b"not json", {"X-Session": "s1"}, "X-Session").session == "s1"


def test_anything_but_a_json_object_gives_no_info() -> None:
    for raw in (None, b"", b"plain text", b"[1, 2]", b'{"prompt": ', b"\xff\xfe{", b"{}"):
        info = parse_request(raw, {})
        assert info.prompt is None and info.model is None and info.blocks == ()
    assert parse_request(b"plain", {}) is NO_INFO


def test_a_deep_body_is_not_parsed_and_raises_nothing() -> None:
    too_many = b'{"a":' * 100_000 + b"1" + b"}" * 100_000  # refused before decoding
    assert parse_request(too_many, {}) is NO_INFO
    deep = b'{"prompt": "p", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # decoder recursion
    assert parse_request(deep, {}) is NO_INFO
    wide = body(prompt="p", x=[[]] * (MAX_BRACKETS // 3))  # many brackets, shallow: parsed
    assert parse_request(wide, {}).prompt == "p"


def test_blocks_are_hashed_only_when_asked() -> None:
    doc = body(model="m", prompt="y" * (3 * BLOCK_CHARS + 10))
    assert parse_request(doc, {}).blocks == ()
    blocks = parse_request(doc, {}, with_blocks=True).blocks
    assert len(blocks) == 3  # the partial last block is not cached by backends either


def test_chained_blocks_match_exactly_the_shared_prefix() -> None:
    base = "".join(chr(97 + i % 26) for i in range(4 * BLOCK_CHARS))
    first = block_hashes(base, "m")
    longer = block_hashes(base + "more text" * 100, "m")
    assert longer[: len(first)] == first
    changed = block_hashes(base[:BLOCK_CHARS] + "Z" + base[BLOCK_CHARS + 1 :], "m")
    assert changed[0] == first[0] and set(changed[1:]).isdisjoint(first)
    assert set(block_hashes(base, "other-model")).isdisjoint(first)


def test_a_turn_quoting_the_answer_starts_with_the_continued_prompt() -> None:
    """What a backend caches after answering (prompt + answer) is how the next turn begins,
    in both API shapes, so the index can learn it."""
    answer = "a long answer " * 40
    first = [{"role": "system", "content": "rules " * 100}, {"role": "user", "content": "q1"}]
    turn = parse_request(body(messages=first), {}, with_blocks=True)
    after = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "q2"}]
    nxt = parse_request(body(messages=after), {}, with_blocks=True)
    assert turn.chat and nxt.prompt is not None
    assert nxt.prompt.startswith(continued_prompt(turn, answer))
    completion = parse_request(body(prompt="once upon a time"), {})
    assert not completion.chat
    assert continued_prompt(completion, ", there was") == "once upon a time, there was"
