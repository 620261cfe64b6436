"""Tensor parallelism: the only module that knows about ranks.

Rank 0 lives in the serving process; ranks 1..N-1 are child processes started here. Weights
are split after the model is built on the meta device, so each rank allocates and loads only
its shard:

- q/k/v and gate/up are column-parallel (rows of ``[out, in]`` split across ranks);
- o and down are row-parallel (columns split), followed by an all-reduce of their outputs;
- the LM head is split by vocabulary and its logits all-gathered (when the vocabulary divides).

Rank 0 drives the others: before each forward pass it broadcasts the :class:`~backend.model.Step`
(a small header, then one int64 payload), so the workers run the same pass in lock step. An
idle rank 0 broadcasts heartbeats, which keeps the collective timeout meaningful: a worker that
hears nothing for ``timeout_s`` has lost rank 0 and exits, and rank 0's watchdog turns a dead
worker into a clear log line and a shutdown instead of a hang.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import multiprocessing as mp
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from backend.model import ModelConfig, Step, Transformer

log = logging.getLogger("tailgate.backend.tp")

COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW_PARALLEL = ("o_proj", "down_proj")

CMD_STEP, CMD_HEARTBEAT, CMD_STOP = 0, 1, 2
# cmd, batch, seq, kv_len, slot_start (-1: none), last_only, graph_batch (0: run eagerly)
HEADER_LEN = 7


@dataclass(frozen=True)
class Rank:
    """Where this process sits: its rank, the world size and the torch device it drives."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_driver(self) -> bool:
        return self.rank == 0


def check_divisible(config: ModelConfig, world: int) -> None:
    """Refuse at start a TP degree that cannot split the heads or the MLP evenly."""
    for name, count in (
        ("attention heads (num_attention_heads)", config.n_heads),
        ("key/value heads (num_key_value_heads)", config.n_kv_heads),
        ("MLP width (intermediate_size)", config.intermediate_size),
    ):
        if count % world:
            raise ValueError(f"--tp {world} does not divide the model's {count} {name}")


def device_for(rank: int, device_type: str) -> torch.device:
    """Rank r drives GPU r; on CPU every rank shares the host."""
    return torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")


def _shard_dim(name: str, config: ModelConfig, world: int) -> int | None:
    leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else name
    if leaf in COLUMN_PARALLEL:
        return 0
    if leaf in ROW_PARALLEL:
        return 1
    if leaf == "lm_head" and config.vocab_size % world == 0:
        return 0
    return None


def shard_slices(
    name: str, shape: Sequence[int], config: ModelConfig, rank: Rank
) -> tuple[slice, ...]:
    """The slice of the full tensor ``name`` that ``rank`` holds (everything if replicated)."""
    index = [slice(None)] * len(shape)
    dim = _shard_dim(name, config, rank.world)
    if dim is not None and rank.world > 1:
        size = shape[dim] // rank.world
        index[dim] = slice(rank.rank * size, (rank.rank + 1) * size)
    return tuple(index)


def _all_reduce_hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    dist.all_reduce(output)
    return output


def _all_gather_hook(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
    parts = [torch.empty_like(output) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, output.contiguous())
    return torch.cat(parts, dim=-1)


def _shrink(linear: nn.Linear, dim: int, world: int) -> nn.Linear:
    out_f, in_f = linear.weight.shape
    if dim == 0:
        out_f //= world
    else:
        in_f //= world
    return nn.Linear(in_f, out_f, bias=False, device=linear.weight.device)


def shard_model(model: Transformer, rank: Rank) -> None:
    """Rewrite a meta-device model in place into this rank's shard and add the collectives."""
    config, world = model.config, rank.world
    if world == 1:
        return
    check_divisible(config, world)
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for owner, names in (
            (attn, ("q_proj", "k_proj", "v_proj")),
            (mlp, ("gate_proj", "up_proj")),
        ):
            for name in names:
                setattr(owner, name, _shrink(getattr(owner, name), 0, world))
        attn.o_proj = _shrink(attn.o_proj, 1, world)
        mlp.down_proj = _shrink(mlp.down_proj, 1, world)
        attn.o_proj.register_forward_hook(_all_reduce_hook)
        mlp.down_proj.register_forward_hook(_all_reduce_hook)
        attn.n_heads //= world
        attn.n_kv_heads //= world
    if _shard_dim("lm_head.weight", config, world) is not None:
        model.lm_head = _shrink(model.lm_head, 0, world)  # also unties a tied head
        model.lm_head.register_forward_hook(_all_gather_hook)


def open_store(host: str, port: int, rank: Rank, timeout_s: float) -> dist.TCPStore:
    """Rank 0 hosts the rendezvous store (``port`` 0 picks a free one); the others join it."""
    timeout = timedelta(seconds=timeout_s)
    return dist.TCPStore(host, port, rank.world, rank.is_driver, timeout, wait_for_workers=False)


def init_group(rank: Rank, store: dist.Store, timeout_s: float) -> None:
    """Join the process group: NCCL on GPUs, gloo on CPU; collectives give up after timeout_s."""
    if rank.world == 1:
        return
    nccl = rank.device.type == "cuda"
    if nccl:
        torch.cuda.set_device(rank.device)
    dist.init_process_group(
        "nccl" if nccl else "gloo",
        store=store,
        rank=rank.rank,
        world_size=rank.world,
        timeout=timedelta(seconds=timeout_s),
        device_id=rank.device if nccl else None,
    )


def close_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class StepChannel:
    """Rank 0 broadcasts each step's inputs; the other ranks receive and replay them.

    The header also names the CUDA-graph bucket rank 0 chose for the step (0: run it eagerly),
    so every rank replays the same graph and its captured collectives meet.
    """

    def __init__(self, rank: Rank) -> None:
        self.rank = rank

    def _header(self, cmd: int, step: Step | None, graph_batch: int = 0) -> Tensor:
        values = [cmd, 0, 0, 0, -1, 0, 0]
        if step is not None:
            b, t = step.tokens.shape
            start = -1 if step.slot_start is None else step.slot_start
            values = [cmd, b, t, step.kv_len, start, int(step.last_only), graph_batch]
        return torch.tensor(values, dtype=torch.int64, device=self.rank.device)

    def send(self, step: Step, graph_batch: int = 0) -> None:
        if self.rank.world == 1:
            return
        dist.broadcast(self._header(CMD_STEP, step, graph_batch), src=0)
        payload = torch.cat((step.tokens.flatten(), step.input_pos.flatten(), step.slots))
        dist.broadcast(payload, src=0)

    def send_control(self, cmd: int) -> None:
        if self.rank.world > 1:
            dist.broadcast(self._header(cmd, None), src=0)

    def receive(self) -> tuple[Step, int] | None:
        """Block for rank 0's next step and its graph bucket; ``None`` means stop.

        Heartbeats are absorbed here.
        """
        while True:
            header = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.rank.device)
            dist.broadcast(header, src=0)
            cmd, b, t, kv_len, start, last_only, graph_batch = header.tolist()
            if cmd == CMD_STOP:
                return None
            if cmd == CMD_HEARTBEAT:
                continue
            payload = torch.empty(2 * b * t + b, dtype=torch.int64, device=self.rank.device)
            dist.broadcast(payload, src=0)
            tokens, pos, slots = payload.split((b * t, b * t, b))
            step = Step(
                tokens=tokens.view(b, t),
                input_pos=pos.view(b, t),
                slots=slots,
                kv_len=kv_len,
                slot_start=None if start < 0 else start,
                last_only=bool(last_only),
            )
            return step, graph_batch


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker when rank 0's process goes away (best effort)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker_entry(target: Callable[..., None], rank: int, args: tuple[Any, ...]) -> None:
    faulthandler.enable()  # a rank killed by a signal says where, instead of vanishing
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when a Ctrl-C ends the run
    target(rank, *args)


class Workers:
    """The child processes of ranks 1..N-1 and a watchdog that reports the first to die."""

    def __init__(self, procs: list[mp.process.BaseProcess]) -> None:
        self.procs = procs
        self._stopping = threading.Event()
        self._reported: set[int] = set()
        self._report_lock = threading.Lock()

    def _report(self, proc: mp.process.BaseProcess) -> str:
        """Log a worker's death once, whoever notices it first; return the description."""
        rank = proc.name.removeprefix("tailgate-rank")
        reason = f"rank {rank} (pid {proc.pid}) exited with code {proc.exitcode}"
        with self._report_lock:
            if proc.pid not in self._reported:
                self._reported.add(proc.pid or 0)
                log.critical("tensor-parallel %s", reason)
        return reason

    @classmethod
    def launch(cls, world: int, target: Callable[..., None], args: tuple[Any, ...]) -> Workers:
        """Start ``target(rank, *args)`` for ranks 1..world-1 in fresh (spawned) interpreters."""
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(
                target=_worker_entry, args=(target, r, args), name=f"tailgate-rank{r}", daemon=True
            )
            for r in range(1, world)
        ]
        for rank, proc in enumerate(procs, start=1):
            proc.start()
            log.info("started tensor-parallel rank %d (pid %d)", rank, proc.pid)
        return cls(procs)

    def watch(self, on_death: Callable[[str], None]) -> None:
        """Call ``on_death(reason)`` from a thread if any worker exits before :meth:`stop`."""

        def run() -> None:
            if not self.procs:
                return
            ready = wait([p.sentinel for p in self.procs])
            dead = next(p for p in self.procs if p.sentinel in ready)
            # The sentinel can fire just before the exit status is readable (is_alive() may
            # still say True); wait for it so the report names the exit code.
            dead.join(1.0)
            if self._stopping.is_set() and dead.exitcode == 0:
                return
            reason = self._report(dead)
            if not self._stopping.is_set():
                on_death(reason)

        threading.Thread(target=run, name="tailgate-rank-watchdog", daemon=True).start()

    def expect_exit(self) -> None:
        """From now on a worker leaving is the shutdown we asked for, not a failure."""
        self._stopping.set()

    def stop(self, timeout_s: float) -> None:
        """Wait up to timeout_s for the workers to leave, then terminate the stragglers."""
        self._stopping.set()
        for proc in self.procs:
            proc.join(timeout_s)
        for proc in self.procs:
            if not proc.is_alive() and proc.exitcode != 0:
                self._report(proc)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout_s)
            if proc.is_alive():
                proc.kill()
