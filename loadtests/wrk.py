"""Closed-loop throughput with ``wrk``: a fixed number of connections, each sending as soon as
its previous answer arrives, so the result is the most the proxy can carry, not its latency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

POST_BODY = b'{"model": "fake", "prompt": "hello", "max_tokens": 16}'
POST_SCRIPT = f"""wrk.method = "POST"
wrk.body = '{POST_BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
"""

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_s: float
    p99_s: float
    errors: int
    requests: int


def parse_duration_s(text: str) -> float:
    """wrk's latency spelling (``812.00us``, ``1.23ms``, ``2.00s``) in seconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def parse_output(text: str) -> WrkResult:
    """Read ``wrk --latency`` output; non-2xx answers and socket errors count as errors."""
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    if not (rps and total and p50 and p99):
        raise ValueError(f"unreadable wrk output:\n{text}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors:(.*)", text)
    if sockets:
        errors += sum(int(n) for n in re.findall(r"\d+", sockets.group(1)))
    return WrkResult(
        requests_per_s=float(rps.group(1)),
        p50_s=parse_duration_s(p50.group(1)),
        p99_s=parse_duration_s(p99.group(1)),
        errors=errors,
        requests=int(total.group(1)),
    )


def command(url: str, script_path: str, duration_s: float, connections: int = 64) -> list[str]:
    return ["wrk", "-t1", f"-c{connections}", f"-d{max(round(duration_s), 1)}s", "--latency",
            "-s", script_path, url]  # fmt: skip
