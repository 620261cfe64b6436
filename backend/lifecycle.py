"""Start, run and stop the backend: worker ranks, engine thread and HTTP server.

Order of start: spawn ranks 1..N-1, open the HTTP port (``/health`` answers at once, ``/ready``
says 503), load the model and warm it up on the engine thread, then flip ``/ready``. Any fatal
event (a rank dying, the engine failing) and SIGTERM/SIGINT all end in the same shutdown; a
fatal one also arms a hard exit so a rank stuck in a collective cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import threading
from collections.abc import Callable

import torch
from aiohttp import web

from backend import ranks, sharding
from backend.config import BackendConfig, ConfigError
from backend.engine import Engine, Runner
from backend.metrics import BackendMetrics
from backend.runner import ModelRunner, RunnerSpec, worker_main
from backend.server import BackendState, build_app
from backend.tokenizer import load_tokenizer
from backend.weights import ModelSource, load_config

log = logging.getLogger("tailgate.backend")


def runner_spec(config: BackendConfig, store_port: int) -> RunnerSpec:
    return RunnerSpec(
        source=ModelSource(preset=config.preset, path=config.model_dir, seed=config.seed),
        world=config.tp,
        device_type=config.device,
        dtype=config.dtype,
        max_batch_size=config.max_batch_size,
        max_model_len=config.max_model_len,
        num_blocks=config.num_kv_blocks,
        block_size=config.block_size,
        store_port=store_port,
        timeout_s=config.collective_timeout_s,
        dist_backend=config.group_backend,
        cuda_graphs=config.use_cuda_graphs,
        prefill_graph_tokens=config.prefill_graph_tokens,
        compile=config.compile,
    )


def build_engine(
    config: BackendConfig,
    runner_factory: Callable[[], Runner],
    on_fatal: Callable[[str], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Engine:
    """The engine with the scheduling settings of ``config``; not started."""
    return Engine(
        runner_factory,
        max_batch_size=config.max_batch_size,
        max_model_len=config.max_model_len,
        max_queue=config.max_queue,
        rng=random.Random(config.seed),
        heartbeat_s=config.heartbeat_s,
        max_num_batched_tokens=config.max_num_batched_tokens,
        look_ahead=config.look_ahead,
        on_fatal=on_fatal,
        on_ready=on_ready,
    )


class Lifecycle:
    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.listening = asyncio.Event()  # set once ``port`` is bound
        self.port = 0

    def request_stop(self) -> None:
        """Begin a clean shutdown (what SIGTERM and SIGINT do)."""
        self._stop.set()

    def fatal(self, reason: str) -> None:
        """From any thread: shut down with exit code 1, and exit hard if that stalls."""
        log.critical("tailgate-backend stopping: %s", reason)
        timer = threading.Timer(self.config.shutdown_timeout_s * 2, os._exit, args=(1,))
        timer.daemon = True
        timer.start()
        self._loop.call_soon_threadsafe(self._fail)

    def _fail(self) -> None:
        self.exit_code = 1
        self._stop.set()

    async def run(self) -> int:
        cfg = self.config
        model_config = load_config(ModelSource(preset=cfg.preset, path=cfg.model_dir))
        try:
            sharding.check_divisible(model_config, cfg.tp)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        gpus = torch.cuda.device_count()
        if cfg.device == "cuda" and cfg.group_backend == "nccl" and cfg.tp > gpus:
            raise ConfigError(
                f"--tp {cfg.tp} needs {cfg.tp} GPUs with nccl; {gpus} visible "
                "(--dist-backend gloo lets ranks share a GPU, for correctness checks)"
            )
        rank0 = ranks.Rank(0, cfg.tp, ranks.device_for(0, cfg.device))
        store = (
            ranks.open_store("127.0.0.1", 0, rank0, cfg.collective_timeout_s)
            if cfg.tp > 1
            else None
        )
        spec = runner_spec(cfg, store.port if store else 0)
        workers = ranks.Workers.launch(cfg.tp, worker_main, (spec,))
        workers.watch(self.fatal)
        engine = build_engine(
            cfg,
            lambda: ModelRunner.start(spec, store),
            on_fatal=self.fatal,
            on_ready=lambda: self._loop.call_soon_threadsafe(self._mark_ready),
        )
        self.state = BackendState(
            config=cfg,
            engine=engine,
            tokenizer=load_tokenizer(
                cfg.model_dir, model_config.bos_token_id, model_config.eos_token_ids
            ),
            metrics=BackendMetrics(
                lambda: engine.waiting_count,
                lambda: engine.running_count,
                gpus=cfg.tp if cfg.device == "cuda" else 0,
                cache=engine.cache_stats,
                model_name=cfg.model_name,
            ),
            vocab_size=model_config.vocab_size,
            rng=random.Random(cfg.seed),
        )
        http = web.AppRunner(
            build_app(self.state),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=cfg.shutdown_timeout_s,
        )
        await http.setup()
        site = web.TCPSite(http, cfg.host, cfg.port)
        await site.start()
        self.port = int(http.addresses[0][1])  # the bound port, also when asked for 0
        log.info("tailgate-backend listening on http://%s:%d (loading model)", cfg.host, self.port)
        self.listening.set()
        engine.start()
        signals = (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._loop.add_signal_handler(sig, self.request_stop)
        try:
            await self._stop.wait()
        finally:
            for sig in signals:
                self._loop.remove_signal_handler(sig)
            await self._shutdown(http, engine, workers)
        return self.exit_code

    def _mark_ready(self) -> None:
        self.state.ready = True
        cfg = self.config
        print(
            f"tailgate-backend ready on http://{cfg.host}:{self.port} "
            f"model={cfg.model_name} tp={cfg.tp} device={cfg.device}",
            flush=True,
        )

    async def _shutdown(self, http: web.AppRunner, engine: Engine, workers: ranks.Workers) -> None:
        timeout_s = self.config.shutdown_timeout_s
        self.state.ready = False
        log.info("tailgate-backend shutting down")
        if self.exit_code == 0 and not await asyncio.to_thread(engine.drain, timeout_s):
            log.warning("requests still running after %.1fs; ending them", timeout_s)
        workers.expect_exit()
        # Engine first: requests still held end with an error event, so handlers can finish.
        await asyncio.to_thread(engine.stop, timeout_s)
        await asyncio.wait_for(http.cleanup(), 2 * timeout_s)
        await asyncio.to_thread(workers.stop, timeout_s)


async def serve(config: BackendConfig) -> int:
    """Run until a signal or a fatal error; the exit status (0 clean, 1 fatal)."""
    return await Lifecycle(config).run()
