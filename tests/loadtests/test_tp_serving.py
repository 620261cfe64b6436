"""The TP serving run end to end on CPU: a tiny TP=2 backend (gloo) behind the gateway serves
streamed openai-client chats, drains on SIGTERM with exit 0, and on a killed rank goes down
with a clear line while the gateway serves from the TP=1 backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("openai")

from loadtests import tp_serving

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(300)]


def test_serve_drain_and_killed_rank_all_pass(tmp_path: Path) -> None:
    out = tmp_path / "phases.json"
    args = ["--requests", "6", "--failover-requests", "4", "--concurrency", "3"]
    args += ["--drain-tokens", "24", "--work-dir", str(tmp_path / "work"), "--json", str(out)]
    assert tp_serving.main(args) == 0
    phases = {p["name"]: p for p in json.loads(out.read_text())}
    assert phases["serve"]["finished"] == 6
    assert phases["drain"]["notes"]["exit_code"] == 0
    killed = phases["killed rank"]["notes"]
    assert killed["server_exit_code"] != 0
    assert killed["log_line"].startswith("tensor-parallel rank 1 (pid ")
    assert killed["routable"] == {"tp": False, "one": True}
