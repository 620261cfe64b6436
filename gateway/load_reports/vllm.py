"""vLLM's scheduler gauges (``/metrics``); the KV gauge was renamed in v0.10."""

from gateway.load_reports.profile import LoadProfile

VLLM = LoadProfile(
    "vllm",
    waiting=("vllm:num_requests_waiting",),
    running=("vllm:num_requests_running",),
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
)
