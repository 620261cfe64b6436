"""The TP = N vs TP = 1 parity tool end to end on CPU (gloo, two ranks): every check passes.

On a GPU the same tool runs the Triton decode kernel at 1/N of the heads per rank and, over
NCCL, captured graphs (BENCHMARKS-backend.md); here it keeps the tool itself honest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from backend.tools import tp_parity

pytestmark = [pytest.mark.torch, pytest.mark.timeout(180)]


def test_tp2_matches_tp1_on_every_check(tmp_path: Path) -> None:
    out = tmp_path / "parity.json"
    assert tp_parity.main(["--preset", "tiny", "--tp", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [c["name"] for c in result["checks"]]
    assert {"whole prefills", "decode, eager", "decode, graphs"} <= set(names)
    assert all(c["passed"] for c in result["checks"])
    assert result["dist_backend"] == "gloo"
    assert result["prefix_hit_tokens"] >= tp_parity.SHARED_BLOCKS * 16  # the cached prefix


def test_a_wrong_shard_fails_the_check() -> None:
    """A check that cannot fail proves nothing: a logit off by 1e-3 or one changed pick fails."""
    assert not tp_parity.Check("x", 1e-3).passed
    assert not tp_parity.Check("x", 0.0, differing_picks=1).passed
    assert tp_parity.Check("x", 1e-5).passed
