"""A real backend on 127.0.0.1: the OpenAI client, error bodies, queue bounds, disconnects."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("torch")
openai = pytest.importorskip("openai")

from tests.backend.conftest import BackendProcess  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL = "tailgate-tiny"
WAIT_S = 15
LONG_TOKENS = 32000  # seconds of decoding on the tiny model: far longer than the test needs


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    # One slot and one waiting place make "running", "waiting" and "full" easy to reach.
    server = BackendProcess(
        "--preset",
        "tiny",
        "--max-batch-size",
        "1",
        "--max-queue",
        "1",
        "--max-model-len",
        "32768",
        "--max-tokens",
        "32000",
    )
    try:
        yield server.wait_ready()
    finally:
        assert server.stop() == 0


@pytest.fixture
def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=WAIT_S)


def depth(http: httpx.Client) -> int:
    return int(http.get("/health").headers["X-Queue-Depth"])


def wait_depth(http: httpx.Client, expected: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while depth(http) != expected:
        assert time.monotonic() < deadline, f"queue depth never reached {expected}"
        time.sleep(0.01)


def test_openai_completions(client: openai.OpenAI) -> None:
    done = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0)
    choice = done.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert done.usage.prompt_tokens == 6  # BOS + five bytes
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Hello",
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].text for c in chunks if c.choices)
    assert streamed == choice.text  # greedy: the same tokens either way
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens


def test_openai_chat_completions(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    done = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=5, temperature=0
    )
    assert done.choices[0].message.role == "assistant"
    assert 1 <= done.usage.completion_tokens <= 5
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=5, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks) == done.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason


def test_chat_continues_a_partial_final_message(client: openai.OpenAI) -> None:
    """The vLLM request shape a gateway resumes a broken stream with: the partial answer as a
    final assistant message; the prompt is the conversation's plus the partial text."""
    messages = [{"role": "user", "content": "Say hi"}]
    fresh = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=2, temperature=0
    )
    resumed = client.chat.completions.create(
        model=MODEL,
        messages=[*messages, {"role": "assistant", "content": "Hel"}],
        max_tokens=2,
        temperature=0,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert resumed.usage.prompt_tokens == fresh.usage.prompt_tokens + len("Hel")
    assert 1 <= resumed.usage.completion_tokens <= 2


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b"{not json", None),
        (b'{"prompt": "hi", "frequency": 1}', "frequency"),
        (b'{"prompt": "hi", "max_tokens": "ten"}', "max_tokens"),
        (b'{"prompt": "hi", "max_tokens": 0}', "max_tokens"),
        (b'{"prompt": "hi", "max_tokens": 32001}', "max_tokens"),
        (b'{"prompt": "' + b"x" * 33000 + b'"}', "prompt"),
    ],
)
def test_bad_requests_get_openai_errors(url: str, payload: bytes, param: str | None) -> None:
    response = httpx.post(f"{url}/v1/completions", content=payload, timeout=WAIT_S)
    assert response.status_code == 400
    assert "X-Queue-Depth" in response.headers
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_path_is_a_json_404_with_depth(url: str) -> None:
    response = httpx.get(f"{url}/v1/nothing", timeout=WAIT_S)
    assert response.status_code == 404
    assert "X-Queue-Depth" in response.headers and "error" in response.json()


def test_metrics_expose_backend_and_vllm_families(url: str, client: openai.OpenAI) -> None:
    prompt = "a shared prefix of more than two blocks of sixteen bytes: "
    for tail in ("one", "two"):  # the second finds the first's full blocks cached
        client.completions.create(model=MODEL, prompt=prompt + tail, max_tokens=2, temperature=0)
    text = httpx.get(f"{url}/metrics", timeout=WAIT_S).text
    for family in (
        "tailgate_backend_queue_depth",
        "tailgate_backend_running_requests",
        "inference_latency_seconds_bucket",
        "tailgate_backend_time_to_first_token_seconds_bucket",
        "tailgate_backend_generated_tokens_total",
        'vllm:num_requests_waiting{model_name="tailgate-tiny"}',
        'vllm:num_requests_running{model_name="tailgate-tiny"}',
        'vllm:kv_cache_usage_perc{model_name="tailgate-tiny"}',
        "vllm:time_to_first_token_seconds_bucket",
        'block_size="16"',
    ):
        assert family in text
    hits = re.search(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$", text, re.M)
    queries = re.search(r"^vllm:prefix_cache_queries_total\{[^}]*\} (\S+)$", text, re.M)
    assert hits and queries and 32 <= float(hits.group(1)) < float(queries.group(1))
    info = re.search(r"^vllm:cache_config_info\{([^}]*)\} 1\.0$", text, re.M)
    assert info and 'num_gpu_blocks="4097"' in info.group(1)  # 2 x 1 x 32768 / 16, + null


def test_full_queue_503_then_disconnect_frees_the_slot(url: str) -> None:
    long_body = {
        "prompt": "a",
        "max_tokens": LONG_TOKENS,
        "stream": True,
        "ignore_eos": True,
        "temperature": 0,
    }
    with httpx.Client(base_url=url, timeout=WAIT_S) as http:
        with http.stream("POST", "/v1/completions", json=long_body) as long:
            assert long.status_code == 200
            lines = long.iter_lines()  # kept referenced: dropping it would close the stream
            next(lines)  # the long request now holds the only slot
            assert depth(http) == 1

            waiter: dict[str, httpx.Response] = {}
            short = {"prompt": "b", "max_tokens": 2, "temperature": 0}
            thread = threading.Thread(
                target=lambda: waiter.update(
                    r=httpx.post(f"{url}/v1/completions", json=short, timeout=WAIT_S)
                )
            )
            thread.start()
            wait_depth(http, 2)  # one running, one waiting: the queue (size 1) is full

            refused = http.post("/v1/completions", json=short)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert refused.headers["X-Queue-Depth"] == "2"
            assert refused.json()["error"]["code"] == "queue_full"
        # Leaving the block drops the long request's connection mid-stream.
        thread.join(WAIT_S)
        assert waiter["r"].status_code == 200  # it got the slot the disconnect freed
        wait_depth(http, 0)
        metrics = http.get("/metrics").text
        generated = re.search(r"^tailgate_backend_generated_tokens_total (\S+)$", metrics, re.M)
        assert generated and float(generated.group(1)) < LONG_TOKENS  # cut short by the disconnect
