"""Our model against transformers' LlamaForCausalLM, at TP=1 and TP=2 (gloo, two processes):
whole prefills, chunked prefills, prefills after a cached prefix, and decoding, all through the
paged KV cache."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from backend import ranks, sharding  # noqa: E402
from backend.engine import Engine, Request  # noqa: E402
from backend.model import Step  # noqa: E402
from backend.runner import ModelRunner, RunnerSpec, worker_main  # noqa: E402
from backend.tools.parity import own_blocks, paged_step  # noqa: E402
from backend.tools.scenarios import Borrowed  # noqa: E402
from backend.weights import ModelSource, load_model  # noqa: E402

pytestmark = pytest.mark.torch

TOLERANCE = 1e-4
PROMPTS = [[1, 17, 42, 99, 5, 230, 7], [1, 300, 12]]
NEW_TOKENS = 12


def spec_for(folder: Path, world: int, graphs: bool = False) -> RunnerSpec:
    return RunnerSpec(
        source=ModelSource(path=folder),
        world=world,
        device_type="cpu",
        dtype="float32",
        max_batch_size=4,
        max_model_len=64,
        block_size=4,
        timeout_s=20,
        cuda_graphs=graphs,
    )


def chunk(runner: ModelRunner, ids: list[int], start: int, seq: int = 0) -> Step:
    """Tokens ``ids`` of sequence ``seq`` from position ``start``, in its own blocks."""
    blocks = own_blocks(seq, runner.max_width)
    return paged_step([(ids, start, blocks)], runner.block_size, runner.device)


def prefill(runner: ModelRunner, ids: list[int], seq: int = 0) -> Step:
    return chunk(runner, ids, 0, seq)


@pytest.fixture(scope="module")
def reference(hf_checkpoint: Path) -> transformers.LlamaForCausalLM:
    return transformers.LlamaForCausalLM.from_pretrained(hf_checkpoint, dtype=torch.float32).eval()


def reference_logits(model: transformers.LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def reference_greedy(model: transformers.LlamaForCausalLM, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    for _ in range(n):
        ids.append(int(reference_logits(model, ids)[0, -1].argmax()))
    return ids[-n:]


def generate(
    runner: ModelRunner, prompts: list[list[int]], n: int, budget: int = 512
) -> list[list[int]]:
    """Greedy tokens for all prompts, batched together by the engine (chunks of ``budget``)."""
    engine = Engine(
        lambda: Borrowed(runner), 4, 64, 8, random.Random(0), max_num_batched_tokens=budget
    )
    done = [threading.Event() for _ in prompts]

    def finisher(i: int):
        return lambda event: event.finish_reason and done[i].set()

    requests = [
        Request(prompt_ids=p, max_tokens=n, ignore_eos=True, on_event=finisher(i))
        for i, p in enumerate(prompts)
    ]
    for request in requests:
        engine.submit(request)
    engine.start()
    try:
        assert all(event.wait(30) for event in done)
    finally:
        engine.stop(10)
    return [r.output_ids for r in requests]


@pytest.fixture(scope="module")
def tp1(hf_checkpoint: Path) -> ModelRunner:
    return ModelRunner.start(spec_for(hf_checkpoint, 1), None)


@pytest.fixture(scope="module")
def tp2(hf_checkpoint: Path) -> Iterator[ModelRunner]:
    """Two ranks with decode graphs built (run uncaptured on CPU); ``use_graphs`` picks the path."""
    spec = spec_for(hf_checkpoint, 2, graphs=True)
    store = ranks.open_store("127.0.0.1", 0, spec.rank(0), spec.timeout_s)
    spec = replace(spec, store_port=store.port)
    workers = ranks.Workers.launch(2, worker_main, (spec,))
    runner = ModelRunner.start(spec, store)
    yield runner
    workers.expect_exit()
    runner.close()
    workers.stop(10)
    assert all(p.exitcode == 0 for p in workers.procs)


def max_logit_diff(runner: ModelRunner, reference) -> float:  # type: ignore[no-untyped-def]
    """The largest logit difference from transformers over every test prompt."""
    return max(
        float((runner.forward(prefill(runner, ids)) - reference_logits(reference, ids)).abs().max())
        for ids in PROMPTS
    )


def cached_prefix_diff(runner: ModelRunner, reference) -> float:  # type: ignore[no-untyped-def]
    """Sequence 0 computes a prompt; sequence 1 shares its first block and computes only the
    rest: the largest logit difference of that rest from an uncached forward."""
    first = [1, 17, 42, 99, 5, 230, 7, 8, 9]
    second = [*first[:4], 300, 12, 13, 14, 15, 16]
    runner.forward(prefill(runner, first, seq=0))
    size = runner.block_size
    shared = own_blocks(0, runner.max_width)[:1]  # the full block of first[:4]
    blocks = shared + own_blocks(1, runner.max_width)[1:]
    step = paged_step([(second[size:], size, blocks)], size, runner.device)
    expected = reference_logits(reference, second)[:, size:]
    return float((runner.forward(step) - expected).abs().max())


def test_tp1_logits_match_transformers(tp1: ModelRunner, reference) -> None:
    worst = max_logit_diff(tp1, reference)
    print(f"\nTP=1 vs transformers: max |logit diff| {worst:.2e}")
    assert worst <= TOLERANCE


def test_chunks_and_decode_through_paged_cache_match_full_forward(tp1, reference) -> None:
    """Chunks of 2 and 3 tokens (the second crosses a block), then one token at a time."""
    ids = PROMPTS[0]
    expected = reference_logits(reference, ids)[0]
    assert (tp1.forward(chunk(tp1, ids[:2], 0))[0] - expected[:2]).abs().max() <= TOLERANCE
    assert (tp1.forward(chunk(tp1, ids[2:5], 2))[0] - expected[2:5]).abs().max() <= TOLERANCE
    for pos in range(5, len(ids)):
        logits = tp1.forward(chunk(tp1, [ids[pos]], pos))[0, 0]
        assert (logits - expected[pos]).abs().max() <= TOLERANCE


def test_tp1_logits_after_a_cached_prefix_equal_uncached(tp1, reference) -> None:
    worst = cached_prefix_diff(tp1, reference)
    print(f"\nTP=1 cached prefix vs transformers: max |logit diff| {worst:.2e}")
    assert worst <= TOLERANCE


def test_tp2_logits_after_a_cached_prefix_equal_uncached(tp2, reference) -> None:
    tp2.use_graphs = False
    worst = cached_prefix_diff(tp2, reference)
    print(f"\nTP=2 cached prefix vs transformers: max |logit diff| {worst:.2e}")
    assert worst <= TOLERANCE


def test_sharded_tied_checkpoint_loads(sharded_checkpoint: Path) -> None:
    assert (sharded_checkpoint / "model.safetensors.index.json").exists()
    assert len(list(sharded_checkpoint.glob("*.safetensors"))) > 1
    reference = transformers.LlamaForCausalLM.from_pretrained(
        sharded_checkpoint, dtype=torch.float32
    )
    runner = ModelRunner.start(spec_for(sharded_checkpoint, 1), None)
    assert runner.model.lm_head.weight is runner.model.embed_tokens.weight  # stored once
    ids = PROMPTS[0]
    assert (
        runner.forward(prefill(runner, ids)) - reference_logits(reference, ids)
    ).abs().max() <= TOLERANCE


def test_tp2_logits_match_transformers(tp2: ModelRunner, reference) -> None:
    # Half of each of q (64 rows), k and v (32 each) on this rank.
    assert tp2.model.layers[0].self_attn.qkv_proj.weight.shape[0] == (64 + 32 + 32) // 2
    worst = max_logit_diff(tp2, reference)
    print(f"\nTP=2 vs transformers: max |logit diff| {worst:.2e}")
    assert worst <= TOLERANCE


def test_greedy_tokens_equal_at_tp1_tp2_and_reference(tp1, tp2, reference) -> None:
    expected = [reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS]
    assert generate(tp1, PROMPTS, NEW_TOKENS) == expected
    assert generate(tp1, PROMPTS, NEW_TOKENS, budget=3) == expected  # chunked prefill
    tp2.use_graphs = False
    assert generate(tp2, PROMPTS, NEW_TOKENS) == expected


def test_tp2_graph_decode_equals_reference(tp2, reference) -> None:
    """Both ranks replay rank 0's choice of bucket: the header carries it."""
    expected = [reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS]
    tp2.use_graphs = True
    assert generate(tp2, PROMPTS, NEW_TOKENS) == expected


def test_tp2_graph_decode_with_padding_rows_matches_eager(tp2) -> None:
    """Two rows in bucket (batch 2, width 2), the second reading one real block and one null:
    both ranks replay the graph rank 0 names; rewriting the same keys keeps the step
    repeatable."""
    for seq, ids in enumerate(PROMPTS):
        tp2.forward(prefill(tp2, ids, seq))
    rows = [
        ([5 + seq], len(ids), own_blocks(seq, tp2.max_width)) for seq, ids in enumerate(PROMPTS)
    ]
    step = paged_step(rows, tp2.block_size, tp2.device)
    logits = {}
    for use_graphs in (True, False):
        tp2.use_graphs = use_graphs
        logits[use_graphs] = tp2.forward(step).clone()
    assert tp2.graph_key(step) == (0, 0, 0)  # graphs off now
    tp2.use_graphs = True
    assert tp2.graph_key(step) == (2, 1, 2)  # 7 + 1 positions: two blocks of 4
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)


def test_indivisible_heads_are_refused_at_start() -> None:
    from backend.model import PRESETS

    with pytest.raises(ValueError, match="does not divide the model's 2 key/value heads"):
        sharding.check_divisible(PRESETS["tiny"], 4)
    with pytest.raises(ValueError, match="attention heads"):
        sharding.check_divisible(PRESETS["tiny"], 3)


def test_each_rank_loads_only_its_slices(sharded_checkpoint: Path) -> None:
    """Rank shards, loaded without a process group, tile the full (tied) checkpoint exactly."""
    full = transformers.LlamaForCausalLM.from_pretrained(sharded_checkpoint, dtype=torch.float32)
    ref = full.state_dict()
    source = ModelSource(path=sharded_checkpoint)
    cpu = torch.device("cpu")
    shards = [load_model(source, ranks.Rank(r, 2, cpu), torch.float32) for r in (0, 1)]
    layer = "layers.1"
    o_parts = [s.get_submodule(f"{layer}.self_attn.o_proj").weight for s in shards]
    assert torch.equal(torch.cat(o_parts, 1), ref[f"model.{layer}.self_attn.o_proj.weight"])
    for fused, parts in (("self_attn.qkv_proj", "qkv"), ("mlp.gate_up_proj", ("gate", "up"))):
        owner = fused.split(".")[0]
        names = [f"model.{layer}.{owner}.{p}_proj.weight" for p in parts]
        for rank, shard in enumerate(shards):  # rank r: its rows of each part, in order
            expected = torch.cat([ref[n].chunk(2)[rank] for n in names])
            assert torch.equal(shard.get_submodule(f"{layer}.{fused}").weight, expected)
    heads = torch.cat([s.lm_head.weight for s in shards])
    assert torch.equal(heads, ref["model.embed_tokens.weight"])  # tied head, split by vocabulary
    # Every linear of every layer is halved; only the RMSNorm weights are replicated.
    held = sum(p.numel() for n, p in shards[0].layers.named_parameters() if "norm" not in n)
    whole = sum(p.numel() for n, p in full.model.layers.named_parameters() if "norm" not in n)
    assert held * 2 == whole
