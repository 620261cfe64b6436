"""Where an observed answer's token facts land: the TTFT / TPOT histograms, the token counters
and goodput under the configured SLO."""

from __future__ import annotations

from gateway.config.model import SloConfig
from gateway.llm_stream import AnswerReport
from gateway.metrics import GatewayMetrics


def meets_slo(report: AnswerReport, slo: SloConfig) -> bool:
    """Every configured target (0 = none) that applies was met.

    TPOT applies to streams with at least two tokens only: a one-token or non-streamed answer
    has no time per output token to miss.
    """
    if slo.ttft > 0 and (report.ttft_s is None or report.ttft_s > slo.ttft):
        return False
    return not (slo.tpot > 0 and report.tpot_s is not None and report.tpot_s > slo.tpot)


def record_answer(
    metrics: GatewayMetrics,
    backend: str,
    report: AnswerReport,
    slo: SloConfig,
    broken: bool = False,
) -> None:
    """Record one answer served by ``backend``; a response that was no answer records nothing
    but its unparsed count. A ``broken`` answer (the upstream broke off mid-body) keeps the
    tokens it delivered but misses the SLO whatever its timings."""
    if report.unparsed is not None:
        metrics.unparsed_answers_for(backend, report.unparsed.value).inc()
    if not report.is_answer:
        return
    model = metrics.model_label(report.model)
    if report.ttft_s is not None:
        metrics.time_to_first_token_for(backend, model).observe(report.ttft_s)
    if report.tpot_s is not None:
        metrics.time_per_output_token_for(backend, model).observe(report.tpot_s)
    if report.token_source is not None and report.completion_tokens is not None:
        source = report.token_source.value
        metrics.tokens_for(backend, model, "completion", source).inc(report.completion_tokens)
        if report.prompt_tokens is not None:
            metrics.tokens_for(backend, model, "prompt", "usage").inc(report.prompt_tokens)
    if report.unparsed is None:  # a half-read answer says nothing sure about its SLO
        met = not broken and meets_slo(report, slo)
        metrics.slo_requests_for(backend, model, "met" if met else "missed").inc()
