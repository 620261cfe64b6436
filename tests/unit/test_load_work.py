"""The work ledger: prefill and decode tokens outstanding, and the measured prefill speed."""

import pytest

from gateway.load.work import SMOOTHING, WorkLedger


def test_prefill_leaves_at_the_first_token_decode_at_the_end() -> None:
    work = WorkLedger()
    assert work.started(100, 20) == 100
    assert work.started(50, 10) == 150  # 150 prefill tokens ahead of the second one's token
    work.first_token(100, ttft_s=0.2, tokens_ahead=100)
    assert (work.prefill_tokens, work.decode_tokens) == (50, 30)
    work.finished(50, 10)  # the second never got a first token
    work.finished(0, 20)
    assert (work.prefill_tokens, work.decode_tokens) == (0, 0)


def test_speed_is_an_ewma_of_ttft_per_token_ahead() -> None:
    work = WorkLedger()
    work.first_token(0, ttft_s=0.1, tokens_ahead=100)
    assert work.s_per_token == pytest.approx(1e-3)
    work.first_token(0, ttft_s=0.3, tokens_ahead=100)
    assert work.s_per_token == pytest.approx(1e-3 + SMOOTHING * 2e-3)
    work.first_token(0, ttft_s=float("inf"), tokens_ahead=100)  # no sample
    work.first_token(0, ttft_s=0.5, tokens_ahead=0)  # no work: no sample
    assert work.s_per_token == pytest.approx(1e-3 + SMOOTHING * 2e-3)
    work.forget_speed()
    assert work.s_per_token is None
