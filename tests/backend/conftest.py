"""Shared fixtures: a tiny Hugging Face checkpoint and real backend servers as subprocesses."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(r"ready on http://127\.0\.0\.1:(\d+)")
LISTEN_LINE = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class BackendProcess:
    """``tailgate-backend`` in a child process; its output is collected line by line."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "--port", "0", "--device", "cpu", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first output line matching ``pattern``; fails on timeout or early exit."""

        def found() -> re.Match[str] | None:
            for line in self.lines:
                if m := pattern.search(line):
                    return m
            return None

        with self._changed:
            ok = self._changed.wait_for(
                lambda: found() or (self.lines and self.lines[-1] == ""), timeout_s
            )
            match = found()
        assert ok and match, f"no {pattern.pattern!r} in output:\n{self.output}"
        return match

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float = 30) -> str:
        port = self.wait_for(READY_LINE, timeout_s).group(1)
        return f"http://127.0.0.1:{port}"

    def stop(self, timeout_s: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)
            raise


@pytest.fixture
def backend_process() -> Iterator[type[BackendProcess]]:
    """A factory of backend servers; each one started is stopped afterwards."""
    started: list[BackendProcess] = []

    class Tracked(BackendProcess):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


def save_tiny_llama(folder: Path, max_shard_size: str | None = None, tie: bool = False) -> Path:
    """A random tiny ``LlamaForCausalLM`` saved with ``save_pretrained`` (fp32, safetensors)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10_000.0,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def sharded_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(
        tmp_path_factory.mktemp("llama-sharded"), max_shard_size="40KB", tie=True
    )
