"""Load-report profiles: each server's waiting/running/KV names read from one /metrics text."""

import pytest

from gateway.config import ConfigError, parse_config
from gateway.load_reports import PROFILES, read_report

VLLM_TEXT = """\
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 3.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 5.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.93
"""

SGLANG_TEXT = """\
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs 2
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs 4
# TYPE sglang:token_usage gauge
sglang:token_usage 0.5
"""

TGI_TEXT = "# TYPE tgi_queue_size gauge\ntgi_queue_size 7\ntgi_batch_current_size 1\n"


def test_each_profile_reads_its_own_server() -> None:
    everything = list(PROFILES.values())
    vllm = read_report(VLLM_TEXT, everything)
    assert vllm.depth == 8.0 and vllm.kv_usage == pytest.approx(0.93)  # the pre-0.10 name
    sglang = read_report(SGLANG_TEXT, everything)
    assert sglang.depth == 6.0 and sglang.kv_usage == 0.5
    tgi = read_report(TGI_TEXT, [PROFILES["tgi"]])
    assert tgi.depth == 8.0 and tgi.kv_usage is None


def test_only_the_listed_profiles_and_extra_names_count() -> None:
    assert read_report(VLLM_TEXT, [PROFILES["sglang"]]).depth is None
    extra = read_report(TGI_TEXT, [], extra_depth=("tgi_queue_size",))
    assert extra.depth == 7.0


def test_an_unknown_profile_is_a_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="tensorrt"):
        parse_config("balancer: {queue_depth: {profiles: [vllm, tensorrt]}}\n")


def test_a_server_exporting_two_profiles_names_is_counted_once() -> None:
    """tailgate's backend exports its own families and vLLM's for the same requests."""
    both = VLLM_TEXT + (
        "# TYPE tailgate_backend_queue_depth gauge\ntailgate_backend_queue_depth 3\n"
        "# TYPE tailgate_backend_running_requests gauge\ntailgate_backend_running_requests 5\n"
    )
    report = read_report(both, list(PROFILES.values()))
    assert report.depth == 8.0  # vLLM's names, listed first; not 16
    assert read_report(both, [PROFILES["tailgate"], PROFILES["vllm"]]).depth == 8.0


VLLM_CACHE_INFO = """\
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",enable_prefix_caching="True",num_gpu_blocks="6400"} 1.0
"""


def test_the_kv_cache_size_is_read_from_vllm_labels_and_sglang_gauge() -> None:
    everything = list(PROFILES.values())
    assert read_report(VLLM_TEXT + VLLM_CACHE_INFO, everything).cache_tokens == 6400 * 16
    sglang = SGLANG_TEXT + "# TYPE sglang:max_total_num_tokens gauge\n"
    sglang += 'sglang:max_total_num_tokens{name="m"} 161721.0\n'
    assert read_report(sglang, everything).cache_tokens == 161721
    assert read_report(VLLM_TEXT, everything).cache_tokens is None  # not reported
    broken = VLLM_CACHE_INFO.replace('num_gpu_blocks="6400"', 'num_gpu_blocks="many"')
    assert read_report(broken, everything).cache_tokens is None


def test_of_several_engines_the_smallest_kv_cache_is_the_size() -> None:
    two = VLLM_CACHE_INFO + (
        'vllm:cache_config_info{block_size="16",enable_prefix_caching="True",'
        'num_gpu_blocks="100"} 1.0\n'
    )
    assert read_report(two, list(PROFILES.values())).cache_tokens == 1600
