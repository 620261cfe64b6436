"""The work ledger: prefill and decode tokens outstanding, and the measured prefill speed."""

import pytest

from gateway.load.work import WorkLedger


def test_prefill_leaves_at_the_first_token_decode_at_the_end() -> None:
    work = WorkLedger()
    assert work.started(100, 20) == 100
    assert work.started(50, 10) == 150  # 150 prefill tokens ahead of the second one's token
    work.first_token(100, ttft_s=0.2, tokens_ahead=100)
    assert (work.prefill_tokens, work.decode_tokens) == (50, 30)
    work.finished(50, 10)  # the second never got a first token
    work.finished(0, 20)
    assert (work.prefill_tokens, work.decode_tokens) == (0, 0)


def test_the_fitted_line_separates_speed_from_a_fixed_cost() -> None:
    """Warm answers (few tokens) and cold ones (many) of one backend: the line recovers
    10 ms + 0.04 ms a token, where a plain ratio would read the mix of traffic."""
    work = WorkLedger()
    assert work.line() is None
    for tokens in (30, 2000, 60, 1500, 30, 2000, 100, 1000):
        work.first_token(0, ttft_s=0.010 + 4e-5 * tokens, tokens_ahead=tokens)
    base, slope = work.line() or (0.0, 0.0)
    assert base == pytest.approx(0.010) and slope == pytest.approx(4e-5)
    assert work.predict_s(500, prior=(1.0, 1.0)) == pytest.approx(0.030)


def test_before_any_spread_the_line_goes_through_the_mean() -> None:
    work = WorkLedger()
    work.first_token(0, ttft_s=0.1, tokens_ahead=100)
    assert work.line() == pytest.approx((0.0, 1e-3))
    work.first_token(0, ttft_s=float("inf"), tokens_ahead=100)  # no sample
    work.first_token(0, ttft_s=0.5, tokens_ahead=0)  # no work: no sample
    assert work.line() == pytest.approx((0.0, 1e-3))
    assert WorkLedger().predict_s(100, prior=(0.01, 1e-4)) == pytest.approx(0.02)
    work.forget_speed()
    assert work.line() is None
