"""How tensor-parallel ranks run: process group, rendezvous, step broadcast and supervision.

Rank 0 lives in the serving process; ranks 1..N-1 are child processes started here. Which slice
of each weight a rank holds is :mod:`backend.sharding`'s business. Rank 0 drives the others:
before each forward pass it broadcasts the :class:`~backend.model.Step` (a small header, then
one int64 payload), so the workers run the same pass in lock step. An
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from backend.model import Step

log = logging.getLogger("tailgate.backend.ranks")

CMD_STEP, CMD_HEARTBEAT, CMD_STOP = 0, 1, 2
# cmd, batch, seq, width (blocks per row), last_only, graph (rows, tokens, width); EAGER: none
HEADER_LEN = 8
GraphKey = tuple[int, int, int]
EAGER: GraphKey = (0, 0, 0)


@dataclass(frozen=True)
class Rank:
    """Where this process sits: its rank, the world size and the torch device it drives."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_driver(self) -> bool:
        return self.rank == 0


def device_for(rank: int, device_type: str) -> torch.device:
    """Rank r drives GPU r, round robin when ranks outnumber GPUs; on CPU all share the host.

    Only gloo can run two ranks on one GPU; :func:`init_group` refuses it for NCCL.
    """
    if device_type != "cuda":
        return torch.device("cpu")
    return torch.device("cuda", rank % max(1, torch.cuda.device_count()))


def open_store(host: str, port: int, rank: Rank, timeout_s: float) -> dist.TCPStore:
    """Rank 0 hosts the rendezvous store (``port`` 0 picks a free one); the others join it."""
    timeout = timedelta(seconds=timeout_s)
    return dist.TCPStore(host, port, rank.world, rank.is_driver, timeout, wait_for_workers=False)


def init_group(rank: Rank, store: dist.Store, timeout_s: float, backend: str) -> None:
    """Join the process group over ``backend`` (nccl or gloo, :mod:`backend.config` says
    when each); collectives give up after timeout_s."""
    if rank.world == 1:
        return
    nccl = backend == "nccl"
    if nccl and rank.device.type != "cuda":
        raise ValueError("the nccl process-group backend needs --device cuda")
    if nccl and rank.world > torch.cuda.device_count():
        raise ValueError(
            f"--tp {rank.world} with nccl needs {rank.world} GPUs, "
            f"{torch.cuda.device_count()} visible (gloo lets ranks share a GPU)"
        )
    if rank.device.type == "cuda":
        torch.cuda.set_device(rank.device)
    dist.init_process_group(
        backend,
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

    The header also names the CUDA graph (rows, tokens, width) rank 0 chose for the step
    (``EAGER``: none), so every rank replays the same graph and its captured collectives meet.
    """

    def __init__(self, rank: Rank) -> None:
        self.rank = rank

    def _header(self, cmd: int, step: Step | None, graph: GraphKey = EAGER) -> Tensor:
        values = [cmd, 0, 0, 0, 0, *EAGER]
        if step is not None:
            b, t = step.tokens.shape
            width = step.block_table.shape[1]
            values = [cmd, b, t, width, int(step.last_only), *graph]
        return torch.tensor(values, dtype=torch.int64, device=self.rank.device)

    def send(self, step: Step, graph: GraphKey = EAGER) -> None:
        if self.rank.world == 1:
            return
        dist.broadcast(self._header(CMD_STEP, step, graph), src=0)
        payload = torch.cat(
            (
                step.tokens.flatten(),
                step.input_pos.flatten(),
                step.write_slots,
                step.block_table.flatten(),
            )
        )
        dist.broadcast(payload, src=0)

    def send_control(self, cmd: int) -> None:
        if self.rank.world > 1:
            dist.broadcast(self._header(cmd, None), src=0)

    def receive(self) -> tuple[Step, GraphKey] | None:
        """Block for rank 0's next step and its graph key; ``None`` means stop.

        Heartbeats are absorbed here.
        """
        while True:
            header = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.rank.device)
            dist.broadcast(header, src=0)
            cmd, b, t, width, last_only, *graph = header.tolist()
            if cmd == CMD_STOP:
                return None
            if cmd == CMD_HEARTBEAT:
                continue
            sizes = (b * t, b * t, b * t, b * width)
            payload = torch.empty(sum(sizes), dtype=torch.int64, device=self.rank.device)
            dist.broadcast(payload, src=0)
            tokens, pos, slots, table = payload.split(sizes)
            step = Step(
                tokens=tokens.view(b, t),
                input_pos=pos.view(b, t),
                write_slots=slots,
                block_table=table.view(b, width),
                last_only=bool(last_only),
            )
            return step, (graph[0], graph[1], graph[2])


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
            if self._stopping.is_set() and dead.exitcode in (0, None):
                return  # the exit we asked for; stop() reports a bad exit code once it is known
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
