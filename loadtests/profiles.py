"""Read py-spy's collapsed stacks (``--format raw``) into shares of time per function.

    python -m loadtests.profiles loadtests/results/profiles/overhead-closed-*.txt

*Self* share: samples whose innermost frame is the function (where the CPU is). *Total* share:
samples with the function anywhere on the stack (what it costs, callees included).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


@dataclass(frozen=True)
class Shares:
    samples: int
    self_share: dict[str, float]
    total_share: dict[str, float]


def frame_name(frame: str) -> str:
    """``send (gateway/proxy.py:140)`` -> ``gateway/proxy.py:send``; line numbers dropped."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = re.sub(r"^.*?/(gateway|loadtests|backend)/", r"\1/", path)
    return f"{path}:{match.group('func')}"


def summarize_collapsed(lines: Iterable[str]) -> Shares:
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in lines:
        match = _LINE.match(line.rstrip("\n"))
        if match is None:
            continue
        count = int(match.group("count"))
        frames = [frame_name(f) for f in match.group("stack").split(";") if f]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            total_counts[name] += count
    scale = 1 / samples if samples else 0.0
    return Shares(
        samples,
        {k: v * scale for k, v in self_counts.items()},
        {k: v * scale for k, v in total_counts.items()},
    )


def top(shares: dict[str, float], n: int, prefix: str = "") -> list[tuple[str, float]]:
    items = [(k, v) for k, v in shares.items() if k.startswith(prefix)]
    return sorted(items, key=lambda kv: -kv[1])[:n]


def main(argv: list[str] | None = None) -> None:
    for path in argv if argv is not None else sys.argv[1:]:
        with open(path) as fh:
            shares = summarize_collapsed(fh)
        print(f"# {path}: {shares.samples} samples")
        print("## self (top 25)")
        for name, share in top(shares.self_share, 25):
            print(f"{share * 100:6.1f}%  {name}")
        print("## total, tailgate's own functions (top 30)")
        for name, share in top(shares.total_share, 30, "gateway/"):
            print(f"{share * 100:6.1f}%  {name}")


if __name__ == "__main__":
    main()
