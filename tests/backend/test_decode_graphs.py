"""The CUDA-graph decode path's static shapes, checked on CPU where it runs without capture.

What a GPU adds (the capture and replay themselves) is checked by ``python -m backend.bench``,
which compares graph and eager greedy tokens on the device.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from backend.graphs import buckets  # noqa: E402
from backend.model import Step  # noqa: E402
from backend.runner import ModelRunner, RunnerSpec  # noqa: E402
from backend.tools.parity import own_blocks, paged_step  # noqa: E402
from backend.weights import ModelSource  # noqa: E402

pytestmark = pytest.mark.torch

BATCH = 8
PROMPTS = {0: [256, 72, 105, 33], 2: [256, 9, 8], 5: [256, 1, 2, 3, 4, 5, 6]}


def runner(graphs: bool, prefill_tokens: int = 0) -> ModelRunner:
    spec = RunnerSpec(
        ModelSource(preset="tiny"),
        1,
        "cpu",
        "float32",
        BATCH,
        64,
        block_size=4,
        cuda_graphs=graphs,
        prefill_graph_tokens=prefill_tokens,
    )
    return ModelRunner.start(spec, None)


@pytest.fixture(scope="module")
def runners() -> tuple[ModelRunner, ModelRunner]:
    return runner(graphs=False), runner(graphs=True)


def prefill(r: ModelRunner, seq: int, ids: list[int]) -> int:
    step = paged_step([(ids, 0, own_blocks(seq, r.max_width))], r.block_size, r.device, True)
    return int(r.forward(step)[0, -1].argmax())


def decode_step(r: ModelRunner, tokens: dict[int, list[int]], prompts=PROMPTS) -> Step:  # type: ignore[no-untyped-def]
    """One token per sequence in ``tokens`` (outputs so far after ``prompts``)."""
    rows = [
        ([tokens[s][-1]], len(prompts[s]) + len(tokens[s]) - 1, own_blocks(s, r.max_width))
        for s in sorted(tokens)
    ]
    return paged_step(rows, r.block_size, r.device)


def test_buckets_are_powers_of_two_then_the_limit() -> None:
    assert buckets(1) == (1,)
    assert buckets(8) == (1, 2, 4, 8)
    assert buckets(12) == (1, 2, 4, 8, 12)


def test_a_step_runs_in_the_smallest_batch_and_width_buckets_holding_it(runners) -> None:
    _, graphs = runners
    step = decode_step(graphs, {0: [1], 2: [1], 5: [1]})  # 3 rows, longest 8 positions
    assert graphs.graph_key(step) == (4, 1, 2)
    long = paged_step([([1], 20, own_blocks(0, graphs.max_width))], 4, graphs.device)
    assert graphs.graph_key(long) == (1, 1, 8)  # 21 positions: 6 blocks, in the bucket of 8
    prefill_step = paged_step([([1, 2], 0, own_blocks(0, 16))], 4, graphs.device)
    assert graphs.graph_key(prefill_step) == (0, 0, 0)  # no prefill graphs: eager


def test_static_decode_matches_eager_with_padding_rows(runners) -> None:
    """Three sequences in batch bucket 4 (one padding row) give eager's logits, step by step,
    while their block tables cross from one width bucket into the next."""
    outputs = []
    for r in runners:
        tokens = {seq: [prefill(r, seq, ids)] for seq, ids in PROMPTS.items()}
        logits = []
        for _ in range(6):
            out = r.forward(decode_step(r, tokens))[:, -1].clone()
            logits.append(out)
            for seq, token in zip(sorted(tokens), out.argmax(-1).tolist(), strict=True):
                tokens[seq].append(token)
        outputs.append((tokens, logits))
    (eager_tokens, eager_logits), (graph_tokens, graph_logits) = outputs
    assert graph_tokens == eager_tokens
    for a, b in zip(eager_logits, graph_logits, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_short_last_token_prefills_run_in_the_smallest_token_and_width_buckets() -> None:
    r = runner(graphs=True, prefill_tokens=32)
    blocks = own_blocks(0, r.max_width)

    def key(ids: list[int], start: int = 0, last_only: bool = True):  # type: ignore[no-untyped-def]
        return r.graph_key(paged_step([(ids, start, blocks)], r.block_size, r.device, last_only))

    assert key([1] * 5) == (1, 16, 2)  # padded up to the smallest bucket, 16
    assert key([1] * 20, start=8) == (1, 32, 8)  # 28 positions: 7 blocks, bucket 8
    assert key([1] * 33) == (0, 0, 0)  # over prefill_graph_tokens: eager
    assert key([1] * 5, last_only=False) == (0, 0, 0)  # every position's logits: eager
    two_rows = paged_step([([1, 2], 0, blocks), ([3, 4], 0, blocks)], r.block_size, r.device, True)
    assert r.graph_key(two_rows) == (0, 0, 0)
    r.use_prefill_graphs = False
    assert key([1] * 5) == (0, 0, 0)


def test_padded_prefill_chunks_match_eager_and_write_only_their_slots(runners) -> None:
    """Chunks padded in front to their bucket (run uncaptured on CPU) give eager's last-token
    logits, also after a prefix already in the cache, and leave the same cache behind."""
    eager = runners[0]
    padded = runner(graphs=True, prefill_tokens=16)
    ids = [256, *range(40, 59)]  # 20 tokens: chunks of 7 (bucket 16) then 13 after them
    for r in (eager, padded):
        for layer in r.model.layers:
            assert layer.self_attn.cache is not None
            layer.self_attn.cache.k.zero_()
            layer.self_attn.cache.v.zero_()
    logits = []
    for r in (eager, padded):
        blocks = own_blocks(0, r.max_width)
        first = paged_step([(ids[:7], 0, blocks)], r.block_size, r.device, last_only=True)
        second = paged_step([(ids[7:], 7, blocks)], r.block_size, r.device, last_only=True)
        assert r.graph_key(second) == ((1, 16, 8) if r is padded else (0, 0, 0))
        logits.append((r.forward(first).clone(), r.forward(second).clone()))
    for a, b in zip(*logits, strict=True):
        assert b.shape == a.shape == (1, 1, 260)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    real = {b * 4 + i for b in own_blocks(0, padded.max_width)[:5] for i in range(4)}
    for mine, theirs in zip(padded.model.layers, eager.model.layers, strict=True):
        k, ref = mine.self_attn.cache.k, theirs.self_attn.cache.k
        torch.testing.assert_close(k[sorted(real)], ref[sorted(real)], rtol=1e-5, atol=1e-5)
        others = torch.ones(k.shape[0], dtype=torch.bool)
        others[sorted(real)] = False
        others[:4] = False  # the null block takes the padding's writes
        assert not k[others].any()


def test_padding_rows_write_only_the_null_block(runners) -> None:
    """Every block but the null one comes through a padded step as the real rows left it."""
    _, graphs = runners
    for seq, ids in PROMPTS.items():
        prefill(graphs, seq, ids)
    step = decode_step(graphs, {0: [5], 2: [6]})  # bucket 2 would fit; force padding below
    caches = [layer.self_attn.cache for layer in graphs.model.layers]
    before = [(c.k.clone(), c.v.clone()) for c in caches]
    graphs.shard.graphs.run(step, (4, 1, 4))  # rows 2, 3 pad; width 2 padded to 4
    written = {int(s) for s in step.write_slots}
    for cache, (k, v) in zip(caches, before, strict=True):
        changed = ((cache.k != k).flatten(1).any(1) | (cache.v != v).flatten(1).any(1)).nonzero()
        assert {int(i) for i in changed} <= written | set(range(graphs.block_size))


def test_close_destroys_the_graphs_before_leaving_the_group(monkeypatch) -> None:
    """NCCL cannot destroy a communicator while a graph holding its collectives lives."""
    from backend import ranks

    events: list[str] = []

    class CapturedGraph:  # what capture() stores, minus the GPU
        def reset(self) -> None:
            events.append("graph destroyed")

    graphs = runner(graphs=True)
    graphs.shard.graphs._graphs[(1, 1, 1)] = CapturedGraph()
    monkeypatch.setattr(ranks, "close_group", lambda: events.append("group left"))
    graphs.close()
    assert events == ["graph destroyed", "group left"]
    assert graphs.shard.graphs._graphs == {}


def test_graphs_are_on_by_default_on_gpus_only_and_allowed_at_any_tp() -> None:
    from backend.cli import parse_args
    from backend.config import ConfigError
    from backend.lifecycle import runner_spec

    assert not parse_args(["--device", "cpu"]).use_cuda_graphs
    gpu = parse_args(["--device", "cuda", "--tp", "1"]).validate()
    assert runner_spec(gpu, 0).cuda_graphs
    assert not runner_spec(parse_args(["--device", "cuda", "--no-cuda-graphs"]), 0).cuda_graphs
    with pytest.raises(ConfigError, match="cuda_graphs needs --device cuda"):
        replace(gpu, device="cpu", dtype="float32", cuda_graphs=True).validate()
    assert runner_spec(replace(gpu, tp=2).validate(), 0).cuda_graphs


def test_dist_backend_defaults_and_gloo_on_gpus_runs_graphs_uncaptured() -> None:
    """NCCL on GPUs and gloo on CPU by default; gloo on a GPU at TP > 1 turns graphs off by
    default (its collectives run on the host) and refuses them when asked for."""
    from backend.cli import parse_args
    from backend.config import ConfigError
    from backend.lifecycle import runner_spec

    assert parse_args(["--device", "cpu"]).group_backend == "gloo"
    gpu = parse_args(["--device", "cuda", "--tp", "2"]).validate()
    assert runner_spec(gpu, 0).dist_backend == "nccl"
    shared = parse_args(["--device", "cuda", "--tp", "2", "--dist-backend", "gloo"]).validate()
    assert runner_spec(shared, 0).dist_backend == "gloo"
    assert not shared.use_cuda_graphs
    assert runner_spec(replace(shared, tp=1), 0).cuda_graphs  # one rank: nothing to capture
    with pytest.raises(ConfigError, match="needs --dist-backend nccl"):
        replace(shared, cuda_graphs=True).validate()
    with pytest.raises(ConfigError, match="nccl needs --device cuda"):
        parse_args(["--device", "cpu", "--dist-backend", "nccl"]).validate()
    with pytest.raises(ConfigError, match="prefill_graph_tokens must be 0"):
        replace(gpu, prefill_graph_tokens=1).validate()
    assert runner_spec(gpu, 0).prefill_graph_tokens == 256  # short prefills as graphs by default
    spec = runner_spec(shared, 0)
    assert not replace(spec, cuda_graphs=True).can_capture
    assert replace(spec, dist_backend="nccl").can_capture


def test_only_float32_parity_decides_the_bench_verdict() -> None:
    from backend.tools.report import parity_lines

    def check(dtype: str, equal: bool) -> dict[str, object]:
        return {"dtype": dtype, "equal": equal, "seqs": [0], "bucket": 1, "tokens": 24,
                "differing": 0 if equal else 3, "max_abs_diff": 0.1, "logit_std": 1.0}  # fmt: skip

    result = {"preset": "1b", "tp": 2, "parity": [check("float32", True), check("bfloat16", False)]}
    lines, ok = parity_lines(result)
    assert ok and "(bf16 rounding, info)" in lines[1]
    result["parity"] = [check("float32", False)]
    lines, ok = parity_lines(result)
    assert not ok and "FAIL, picks differ" in lines[0]
