"""Pure pieces: sampling, text streaming with stop strings, request checking, settings."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from backend.config import BackendConfig, ConfigError, parse_duration_s  # noqa: E402
from backend.protocol import (  # noqa: E402
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    ApiError,
    parse_request,
    resolve_max_tokens,
)
from backend.sampling import SamplingParams, sample, sample_row  # noqa: E402
from backend.text import TextStream  # noqa: E402
from backend.tokenizer import ByteTokenizer  # noqa: E402

pytestmark = pytest.mark.torch


def test_greedy_rows_take_argmax_without_generator() -> None:
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    assert sample(logits, [SamplingParams(), SamplingParams()], [None, None]) == [1, 0]


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.log(torch.tensor([0.6, 0.3, 0.05, 0.05]))
    gen = torch.Generator().manual_seed(0)
    picks = {sample_row(logits, SamplingParams(1.0, top_p=0.7), gen) for _ in range(200)}
    assert picks == {0, 1}
    only_top = {sample_row(logits, SamplingParams(1.0, top_p=0.5), gen) for _ in range(50)}
    assert only_top == {0}


def test_same_seed_same_draws() -> None:
    logits = torch.zeros(50)  # uniform: any two unseeded sequences would differ

    def draws(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [sample_row(logits, SamplingParams(0.8), gen) for _ in range(10)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_text_stream_waits_for_whole_characters() -> None:
    stream = TextStream(ByteTokenizer())
    pieces = [stream.push(b) for b in "é!".encode()]
    assert pieces == ["", "é", "!"]


def test_text_stream_holds_back_possible_stop_and_cuts_at_it() -> None:
    stream = TextStream(ByteTokenizer(), stops=("END",))
    sent = "".join(stream.push(b) for b in b"abcEN")
    assert sent == "abc" and not stream.stopped
    assert stream.push(ord("D")) == "" and stream.stopped
    assert stream.text == "abc"


def test_text_stream_flushes_held_text_when_no_stop_came() -> None:
    stream = TextStream(ByteTokenizer(), stops=("xyz",))
    sent = "".join(stream.push(b) for b in b"hello x")
    assert sent + stream.flush() == "hello x"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "hi", "bogus": 1}, "bogus"),
        ({"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": True}, "max_tokens"),
        ({"prompt": "hi", "temperature": 3}, "temperature"),
        ({"prompt": "hi", "top_p": 0}, "top_p"),
        ({"prompt": "hi", "n": 2}, "n"),
        ({"prompt": 5}, "prompt"),
        ({"max_tokens": 5}, "prompt"),
    ],
)
def test_bad_completion_fields_name_the_param(body: dict, param: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_request(body, COMPLETION_FIELDS, "prompt")
    assert err.value.status == 400 and err.value.param == param


def test_chat_request_flattens_text_parts() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ],
        "max_completion_tokens": 3,
        "stop": "x",
        "stream_options": {"include_usage": True},
    }
    params = parse_request(body, CHAT_FIELDS, "messages")
    assert params.messages == [{"role": "user", "content": "ab"}]
    assert (params.max_tokens, params.stop, params.include_usage) == (3, ("x",), True)
    assert params.sampling.temperature == 1.0


def test_max_tokens_bounds() -> None:
    assert resolve_max_tokens(None, 10, 100, 50) == 50
    assert resolve_max_tokens(None, 90, 100, 50) == 10
    for requested, prompt_len in ((0, 10), (51, 10), (20, 90)):
        with pytest.raises(ApiError):
            resolve_max_tokens(requested, prompt_len, 100, 50)
    with pytest.raises(ApiError) as err:
        resolve_max_tokens(None, 101, 100, 50)
    assert err.value.code == "context_length_exceeded"


def test_durations_and_config_validation() -> None:
    assert parse_duration_s("200ms") == pytest.approx(0.2)
    assert parse_duration_s("2") == 2.0 and parse_duration_s("1m") == 60.0
    with pytest.raises(ValueError):
        parse_duration_s("fast")
    with pytest.raises(ConfigError, match="fault_error_rate"):
        BackendConfig(fault_error_rate=1.5).validate()
    with pytest.raises(ConfigError, match="exactly one"):
        BackendConfig(preset=None).validate()


def test_continue_final_message_follows_vllm_rules() -> None:
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hel"}]
    body = {"messages": history, "continue_final_message": True, "add_generation_prompt": False}
    params = parse_request(body, CHAT_FIELDS, "messages")
    assert params.continue_final_message and not params.add_generation_prompt
    with pytest.raises(ApiError, match="needs add_generation_prompt: false") as both:
        parse_request({**body, "add_generation_prompt": True}, CHAT_FIELDS, "messages")
    assert both.value.status == 400
    with pytest.raises(ApiError, match="final assistant message"):
        parse_request({**body, "messages": history[:1]}, CHAT_FIELDS, "messages")
    with pytest.raises(ApiError, match="unknown field"):  # completions continue by prompt
        parse_request({"prompt": "hi", "continue_final_message": True}, COMPLETION_FIELDS, "prompt")
