"""SGLang's scheduler gauges; ``token_usage`` is the share of KV tokens in use, of
``max_total_num_tokens``."""

from gateway.load_reports.profile import LoadProfile

SGLANG = LoadProfile(
    "sglang",
    waiting=("sglang:num_queue_reqs",),
    running=("sglang:num_running_reqs",),
    kv_usage=("sglang:token_usage",),
    cache_tokens=("sglang:max_total_num_tokens",),
)
