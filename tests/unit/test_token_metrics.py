"""Goodput under the SLO, and what one observed answer adds to the metric families."""

from __future__ import annotations

import pytest

from gateway.config.model import SloConfig
from gateway.llm_stream import AnswerReport, TokenSource, Unparsed
from gateway.metrics import MAX_MODEL_LABELS, OTHER_MODEL, GatewayMetrics, ModelLabels
from gateway.token_metrics import meets_slo, record_answer


def report(**overrides: object) -> AnswerReport:
    fields: dict[str, object] = {
        "streamed": True,
        "model": "m",
        "ttft_s": 0.2,
        "tpot_s": 0.02,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "token_source": TokenSource.USAGE,
        "unparsed": None,
    }
    fields.update(overrides)
    return AnswerReport(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "slo", "met"),
    [
        ({}, SloConfig(ttft=0.5, tpot=0.05), True),
        ({"ttft_s": 0.6}, SloConfig(ttft=0.5, tpot=0.05), False),
        ({"tpot_s": 0.06}, SloConfig(ttft=0.5, tpot=0.05), False),
        ({"tpot_s": 0.06}, SloConfig(ttft=0.5, tpot=0.0), True),  # 0 leaves the target out
        ({"tpot_s": None}, SloConfig(ttft=0.5, tpot=0.05), True),  # one token: no TPOT to miss
        ({"ttft_s": None}, SloConfig(ttft=0.5, tpot=0.05), False),  # no token ever came
    ],
)
def test_meets_slo(overrides: dict[str, object], slo: SloConfig, met: bool) -> None:
    assert meets_slo(report(**overrides), slo) is met


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    sample = metrics.registry.get_sample_value(name, labels)
    return 0.0 if sample is None else sample


def test_record_answer_fills_every_family() -> None:
    metrics = GatewayMetrics()
    record_answer(metrics, "b1", report(), SloConfig())
    record_answer(metrics, "b1", report(ttft_s=0.9, token_source=TokenSource.EVENTS), SloConfig())
    labels = {"backend": "b1", "model": "m"}
    assert value(metrics, "tailgate_time_to_first_token_seconds_count", **labels) == 2
    assert value(metrics, "tailgate_time_per_output_token_seconds_count", **labels) == 2
    completion = {**labels, "kind": "completion"}
    assert value(metrics, "tailgate_tokens_total", **completion, source="usage") == 5
    assert value(metrics, "tailgate_tokens_total", **completion, source="events") == 5
    assert value(metrics, "tailgate_tokens_total", **labels, kind="prompt", source="usage") == 20
    assert value(metrics, "tailgate_slo_requests_total", **labels, result="met") == 1
    assert value(metrics, "tailgate_slo_requests_total", **labels, result="missed") == 1


def test_an_unparsed_answer_is_counted_and_left_out_of_goodput() -> None:
    metrics = GatewayMetrics()
    record_answer(metrics, "b1", report(unparsed=Unparsed.MALFORMED), SloConfig())
    assert value(metrics, "tailgate_unparsed_answers_total", backend="b1", reason="malformed") == 1
    assert value(metrics, "tailgate_slo_requests_total", backend="b1", model="m", result="met") == 0


def test_an_answer_broken_off_keeps_its_tokens_but_misses_the_slo() -> None:
    metrics = GatewayMetrics()
    record_answer(metrics, "b1", report(), SloConfig(), broken=True)
    labels = {"backend": "b1", "model": "m"}
    assert value(metrics, "tailgate_slo_requests_total", **labels, result="missed") == 1
    completion = {**labels, "kind": "completion", "source": "usage"}
    assert value(metrics, "tailgate_tokens_total", **completion) == 5


def test_model_labels_are_bounded() -> None:
    labels = ModelLabels()
    names = [labels(f"model-{i}") for i in range(MAX_MODEL_LABELS + 5)]
    assert names[:MAX_MODEL_LABELS] == [f"model-{i}" for i in range(MAX_MODEL_LABELS)]
    assert set(names[MAX_MODEL_LABELS:]) == {OTHER_MODEL}
    assert labels("model-0") == "model-0"
    assert labels(None) == "-"
