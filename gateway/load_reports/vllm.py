"""vLLM's scheduler gauges (``/metrics``); the KV gauge was renamed in v0.10. The KV cache's
size is in ``cache_config_info``'s labels (``num_gpu_blocks`` blocks of ``block_size`` tokens)."""

from gateway.load_reports.profile import LoadProfile

VLLM = LoadProfile(
    "vllm",
    waiting=("vllm:num_requests_waiting",),
    running=("vllm:num_requests_running",),
    kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    cache_blocks_info=("vllm:cache_config_info",),
)
