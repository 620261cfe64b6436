"""Start a (possibly sharded) :class:`~backend.runner.ModelRunner` in this process as rank 0.

Ranks 1..N-1 are spawned as in serving (:func:`backend.runner.worker_main`); leaving the
context tells them to stop, closes rank 0 and waits for the workers. A worker that dies
earlier ends this process (``on_worker_death``), since rank 0 would otherwise wait forever
inside a collective.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from backend import ranks
from backend.runner import ModelRunner, RunnerSpec, worker_main


def exit_on_worker_death(reason: str) -> None:
    """A dead rank would leave rank 0 waiting forever inside a collective."""
    print(f"tensor-parallel {reason}", file=sys.stderr, flush=True)
    os._exit(3)


@contextmanager
def sharded_runner(
    spec: RunnerSpec, on_worker_death: Callable[[str], None] = exit_on_worker_death
) -> Iterator[ModelRunner]:
    """Rank 0's runner of ``spec`` with its workers running; all of them stopped on exit."""
    store = None
    if spec.world > 1:
        store = ranks.open_store(spec.store_host, 0, spec.rank(0), spec.timeout_s)
        spec = replace(spec, store_port=store.port)
    workers = ranks.Workers.launch(spec.world, worker_main, (spec,))
    workers.watch(on_worker_death)
    runner = ModelRunner.start(spec, store)
    try:
        yield runner
    finally:
        workers.expect_exit()
        runner.close()
        workers.stop(30)
