"""Which way of mixing captured NCCL collectives with eager control broadcasts survives TP > 1.

``python3 -m backend.tools.graph_probe`` (needs two GPUs) runs a toy tensor-parallel model shaped
like the backend's decode step (row-parallel all-reduces, an all-gathered head) through the same
protocol as :mod:`backend.runner`: rank 0 broadcasts a header and the inputs, the ranks write
them into static buffers and replay a CUDA graph of the bucket rank 0 named, interleaved with
heartbeats and with an eager pass of the same step (compared to the replay). Then the ranks
leave the process group. Each variant runs in fresh processes under its own hard timeout, so a
stall costs one variant, and each rank prints where it is (JSON lines) and, just before the
timeout, its Python stacks.

On 2 H200s (torch 2.11, NCCL 2.28.9) every variant replayed 200 steps equal to eager; only
``as-is``, which leaves the group with its graphs alive, then hung, in ``destroy_process_group``
on both ranks. That is why the backend destroys its graphs first (``DecodeGraphs.release``).
Rerun it when torch or NCCL changes.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

HIDDEN, FFN, LAYERS, VOCAB = 1024, 2048, 4, 4096
BUCKETS = (1, 2, 4, 8)
CMD_STEP, CMD_HEARTBEAT, CMD_STOP = 0, 1, 2
TOLERANCE = 1e-4  # float32: graph and eager run the same kernels on the same inputs
T0 = time.monotonic()


@dataclass(frozen=True)
class Variant:
    name: str
    own_group: bool  # in-graph collectives on a process group of their own
    replay_on_capture_stream: bool  # replay on the capture stream, fenced by stream waits
    release_before_destroy: bool  # destroy the graphs before the process group


VARIANTS = (
    Variant("as-is", own_group=False, replay_on_capture_stream=False, release_before_destroy=False),
    Variant("release", False, False, True),
    Variant("own-group", True, False, True),
    Variant("capture-stream", False, True, True),
    Variant("own-group+capture-stream", True, True, True),
)


def _say(rank: int, phase: str, **fields: object) -> None:
    record = {"rank": rank, "phase": phase, "t_s": round(time.monotonic() - T0, 3), **fields}
    print(json.dumps(record), flush=True)


class ToyShard:
    """One rank's shard of a residual MLP stack with an all-gathered head (float32)."""

    def __init__(self, rank: int, world: int, device: torch.device, group: dist.ProcessGroup):
        gen = torch.Generator().manual_seed(0)

        def full(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen) * 0.03

        part, vpart = FFN // world, VOCAB // world
        own = slice(rank * part, (rank + 1) * part)
        self.embed = full(VOCAB, HIDDEN).to(device)
        self.layers = []
        for _ in range(LAYERS):
            up, down = full(FFN, HIDDEN), full(HIDDEN, FFN)
            self.layers.append((up[own].to(device), down[:, own].to(device)))
        self.head = full(VOCAB, HIDDEN)[rank * vpart : (rank + 1) * vpart].to(device)
        self.group, self.world = group, world

    def __call__(self, tokens: Tensor) -> Tensor:
        x = self.embed[tokens]
        for up, down in self.layers:
            y = torch.relu(x @ up.T) @ down.T
            dist.all_reduce(y, group=self.group)
            x = x + y
        local = x @ self.head.T
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local, group=self.group)
        return torch.cat(parts, dim=-1)


def _header(cmd: int, bucket: int = 0) -> Tensor:
    return torch.tensor([cmd, bucket], dtype=torch.int64, device="cuda")


def _capture(
    shard: ToyShard, static: Tensor, stream: torch.cuda.Stream
) -> tuple[dict[int, torch.cuda.CUDAGraph], dict[int, Tensor]]:
    """One graph per bucket, largest first, as :meth:`DecodeGraphs.capture` does."""
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    outputs: dict[int, Tensor] = {}
    pool = torch.cuda.graph_pool_handle()
    stream.wait_stream(torch.cuda.current_stream(static.device))
    for bucket in reversed(BUCKETS):
        with torch.cuda.stream(stream):
            shard(static[:bucket])  # warms the group's communicator on the capture stream
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
            outputs[bucket] = shard(static[:bucket])
        graphs[bucket] = graph
    torch.cuda.synchronize(static.device)
    return graphs, outputs


def rank_main(rank: int, world: int, port: int, variant: Variant, steps: int) -> None:
    """Join, capture, follow rank 0's steps until it says stop, then leave the group."""
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timedelta(seconds=30))
    dist.init_process_group(
        "nccl", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=20),
        device_id=device,
    )  # fmt: skip
    group = dist.new_group(list(range(world))) if variant.own_group else dist.group.WORLD
    _say(rank, "joined", nccl=".".join(map(str, torch.cuda.nccl.version())))
    shard = ToyShard(rank, world, device, group)
    static = torch.zeros(max(BUCKETS), dtype=torch.int64, device=device)
    stream = torch.cuda.Stream(device)
    with torch.inference_mode():
        graphs, outputs = _capture(shard, static, stream)
        _say(rank, "captured")

        def replay(bucket: int, tokens: Tensor) -> Tensor:
            static[:bucket].copy_(tokens)
            if variant.replay_on_capture_stream:
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream):
                    graphs[bucket].replay()
                torch.cuda.current_stream(device).wait_stream(stream)
            else:
                graphs[bucket].replay()
            return outputs[bucket].clone()

        gen = torch.Generator().manual_seed(1)
        worst, done, start_s = 0.0, 0, time.monotonic()
        while True:
            if rank == 0:
                if done % 10 == 5:
                    dist.broadcast(_header(CMD_HEARTBEAT), src=0)
                cmd = CMD_STEP if done < steps else CMD_STOP
                bucket = BUCKETS[(done * 7) % len(BUCKETS)]
                dist.broadcast(_header(cmd, bucket), src=0)
            else:
                header = _header(0)
                dist.broadcast(header, src=0)
                cmd, bucket = header.tolist()
                if cmd == CMD_HEARTBEAT:
                    continue
            if cmd == CMD_STOP:
                break
            tokens = torch.randint(0, VOCAB, (bucket,), generator=gen).to(device)
            dist.broadcast(tokens, src=0)  # rank 1's own draw is overwritten
            graphed = replay(bucket, tokens)
            eager = shard(tokens)
            worst = max(worst, (graphed - eager).abs().max().item())
            done += 1
            if done % 50 == 0:
                _say(rank, "steps", done=done)
        _say(rank, "replayed", steps=done, max_abs_diff=worst, s=time.monotonic() - start_s)
    if variant.release_before_destroy:
        torch.cuda.synchronize(device)
        for graph in graphs.values():
            graph.reset()
        graphs.clear()
        outputs.clear()
    begin_s = time.monotonic()
    dist.destroy_process_group()
    _say(rank, "left", s=time.monotonic() - begin_s)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_variant(variant: Variant, steps: int, timeout_s: float, log: Path) -> str:
    """Both ranks of one variant in fresh processes; a one-line verdict."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"rank{r}.log" for r in range(2)]
        procs = []
        for rank, out in enumerate(outs):
            cmd = [sys.executable, "-m", "backend.tools.graph_probe", "--rank", str(rank)]
            cmd += ["--port", str(port), "--variant", json.dumps(asdict(variant))]
            cmd += ["--steps", str(steps), "--timeout-s", str(timeout_s)]
            with out.open("w") as sink:
                procs.append(
                    subprocess.Popen(
                        cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        deadline = time.monotonic() + timeout_s
        timed_out = False
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        texts = [out.read_text() for out in outs]
    with log.open("a") as sink:
        for rank, text in enumerate(texts):
            sink.write(f"===== {variant.name} rank {rank} (exit {procs[rank].returncode})\n{text}")
    records = [
        [json.loads(ln) for ln in text.splitlines() if ln.startswith('{"rank"')] for text in texts
    ]
    phases = [rs[-1] if rs else {"phase": "none"} for rs in records]
    diffs = [r["max_abs_diff"] for rs in records for r in rs if r["phase"] == "replayed"]
    ok = not timed_out and all(p["phase"] == "left" for p in phases) and diffs
    ok = ok and max(diffs) <= TOLERANCE and all(proc.returncode == 0 for proc in procs)
    where = " / ".join(
        f"r{r}: {p['phase']}" + (f" (done {p['done']})" if "done" in p else "")
        for r, p in enumerate(phases)
    )
    verdict = "PASS" if ok else ("STALL" if timed_out else "FAIL")
    diff = f", max |graph - eager| {max(diffs):.2e}" if diffs else ""
    return f"{verdict:5} {variant.name:26} last: {where}{diff}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m backend.tools.graph_probe", description=__doc__)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--timeout-s", type=float, default=40.0, help="per variant")
    p.add_argument("--log", type=Path, default=Path("graph_probe.log"))
    p.add_argument("--only", help="comma-separated variant names")
    p.add_argument("--rank", type=int, help="internal: run one rank")
    p.add_argument("--port", type=int)
    p.add_argument("--variant")
    a = p.parse_args(argv)
    if a.rank is not None:
        faulthandler.dump_traceback_later(max(1.0, a.timeout_s - 8), exit=False)
        rank_main(a.rank, 2, a.port, Variant(**json.loads(a.variant)), a.steps)
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.device_count()} GPUs", flush=True)
    chosen = [v for v in VARIANTS if not a.only or v.name in a.only.split(",")]
    verdicts = [run_variant(v, a.steps, a.timeout_s, a.log) for v in chosen]
    for line in verdicts:
        print(line, flush=True)
    return 0 if any(line.startswith("PASS") for line in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
