"""Our model against transformers' LlamaForCausalLM, at TP=1 and TP=2 (gloo, two processes)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from backend import tp  # noqa: E402
from backend.engine import Engine, Request  # noqa: E402
from backend.model import Step  # noqa: E402
from backend.runner import ModelRunner, RunnerSpec, worker_main  # noqa: E402
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
        timeout_s=20,
        cuda_graphs=graphs,
    )


def prefill(ids: list[int]) -> Step:
    n = len(ids)
    return Step(
        torch.tensor([ids]), torch.arange(n)[None], torch.tensor([0]), kv_len=n, slot_start=0
    )


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


class Borrowed:
    """A runner lent to an engine that must not close it (the fixture owns it)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner, self.config, self.device = runner, runner.config, runner.device

    def forward(self, step: Step) -> torch.Tensor:
        return self.runner.forward(step)

    def heartbeat(self) -> None:
        self.runner.heartbeat()

    def close(self) -> None:
        pass


def generate(runner: ModelRunner, prompts: list[list[int]], n: int) -> list[list[int]]:
    """Greedy tokens for all prompts, batched together by the engine."""
    engine = Engine(lambda: Borrowed(runner), 4, 64, 8, random.Random(0))
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
    store = tp.open_store("127.0.0.1", 0, spec.rank(0), spec.timeout_s)
    spec = replace(spec, store_port=store.port)
    workers = tp.Workers.launch(2, worker_main, (spec,))
    runner = ModelRunner.start(spec, store)
    yield runner
    workers.expect_exit()
    runner.close()
    workers.stop(10)
    assert all(p.exitcode == 0 for p in workers.procs)


def max_logit_diff(runner: ModelRunner, reference) -> float:  # type: ignore[no-untyped-def]
    """The largest logit difference from transformers over every test prompt."""
    return max(
        float((runner.forward(prefill(ids)) - reference_logits(reference, ids)).abs().max())
        for ids in PROMPTS
    )


def test_tp1_logits_match_transformers(tp1: ModelRunner, reference) -> None:
    worst = max_logit_diff(tp1, reference)
    print(f"\nTP=1 vs transformers: max |logit diff| {worst:.2e}")
    assert worst <= TOLERANCE


def test_decode_through_kv_cache_matches_full_forward(tp1: ModelRunner, reference) -> None:
    ids = PROMPTS[0]
    tp1.forward(prefill(ids[:3]))
    expected = reference_logits(reference, ids)[0]
    for pos in range(3, len(ids)):
        step = Step(torch.tensor([[ids[pos]]]), torch.tensor([[pos]]), torch.tensor([0]), pos + 1)
        assert (tp1.forward(step)[0, 0] - expected[pos]).abs().max() <= TOLERANCE


def test_sharded_tied_checkpoint_loads(sharded_checkpoint: Path) -> None:
    assert (sharded_checkpoint / "model.safetensors.index.json").exists()
    assert len(list(sharded_checkpoint.glob("*.safetensors"))) > 1
    reference = transformers.LlamaForCausalLM.from_pretrained(
        sharded_checkpoint, dtype=torch.float32
    )
    runner = ModelRunner.start(spec_for(sharded_checkpoint, 1), None)
    ids = PROMPTS[0]
    assert (
        runner.forward(prefill(ids)) - reference_logits(reference, ids)
    ).abs().max() <= TOLERANCE


def test_tp2_logits_match_transformers(tp2: ModelRunner, reference) -> None:
    assert tp2.model.layers[0].self_attn.q_proj.weight.shape[0] == 64 // 2  # half the q heads
    worst = max_logit_diff(tp2, reference)
    print(f"\nTP=2 vs transformers: max |logit diff| {worst:.2e}")
    assert worst <= TOLERANCE


def test_greedy_tokens_equal_at_tp1_tp2_and_reference(tp1, tp2, reference) -> None:
    expected = [reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS]
    assert generate(tp1, PROMPTS, NEW_TOKENS) == expected
    tp2.use_graphs = False
    assert generate(tp2, PROMPTS, NEW_TOKENS) == expected


def test_tp2_graph_decode_equals_reference(tp2, reference) -> None:
    """Both ranks replay rank 0's choice of bucket: the header carries it."""
    expected = [reference_greedy(reference, p, NEW_TOKENS) for p in PROMPTS]
    tp2.use_graphs = True
    assert generate(tp2, PROMPTS, NEW_TOKENS) == expected


def test_tp2_graph_decode_on_scattered_slots_matches_eager(tp2) -> None:
    """Slots 0 and 2 in bucket 4; rewriting the same keys makes the step repeatable."""
    for slot, ids in zip((0, 2), PROMPTS, strict=True):
        n = len(ids)
        tp2.forward(Step(torch.tensor([ids]), torch.arange(n)[None], torch.tensor([slot]), n, slot))
    positions = [len(p) for p in PROMPTS]
    step = Step(
        torch.tensor([[5], [6]]), torch.tensor([[p] for p in positions]), torch.tensor([0, 2]), 8
    )
    logits = {}
    for use_graphs in (True, False):
        tp2.use_graphs = use_graphs
        logits[use_graphs] = tp2.forward(step).clone()
    assert tp2.graph_batch(step) == 0  # graphs off now
    tp2.use_graphs = True
    assert tp2.graph_batch(step) == 4
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)


def test_indivisible_heads_are_refused_at_start() -> None:
    from backend.model import PRESETS

    with pytest.raises(ValueError, match="does not divide the model's 2 key/value heads"):
        tp.check_divisible(PRESETS["tiny"], 4)
    with pytest.raises(ValueError, match="attention heads"):
        tp.check_divisible(PRESETS["tiny"], 3)


def test_each_rank_loads_only_its_slices(sharded_checkpoint: Path) -> None:
    """Rank shards, loaded without a process group, tile the full (tied) checkpoint exactly."""
    full = transformers.LlamaForCausalLM.from_pretrained(sharded_checkpoint, dtype=torch.float32)
    ref = full.state_dict()
    source = ModelSource(path=sharded_checkpoint)
    shards = [load_model(source, tp.Rank(r, 2, torch.device("cpu")), torch.float32) for r in (0, 1)]
    layer = "layers.1"
    for name, dim in (("self_attn.k_proj", 0), ("mlp.up_proj", 0), ("self_attn.o_proj", 1)):
        parts = [s.get_submodule(f"{layer}.{name}").weight for s in shards]
        assert torch.equal(torch.cat(parts, dim), ref[f"model.{layer}.{name}.weight"])
    heads = torch.cat([s.lm_head.weight for s in shards])
    assert torch.equal(heads, ref["model.embed_tokens.weight"])  # tied head, split by vocabulary
    # Every linear of every layer is halved; only the RMSNorm weights are replicated.
    held = sum(p.numel() for n, p in shards[0].layers.named_parameters() if "norm" not in n)
    whole = sum(p.numel() for n, p in full.model.layers.named_parameters() if "norm" not in n)
    assert held * 2 == whole
