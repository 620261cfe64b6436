"""SGLang's scheduler gauges; ``token_usage`` is the share of KV tokens in use."""

from gateway.load_reports.profile import LoadProfile

SGLANG = LoadProfile(
    "sglang",
    waiting=("sglang:num_queue_reqs",),
    running=("sglang:num_running_reqs",),
    kv_usage=("sglang:token_usage",),
)
