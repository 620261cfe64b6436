"""Parsing of the human-friendly units used in tailgate's YAML: durations and byte sizes.

Durations accept ``250ms``, ``10s``, ``5m``, ``1h`` or a plain number of seconds; sizes accept
``16MiB``, ``64KiB``, ``1GB`` or a plain number of bytes. Both raise ``ValueError`` with a
message fit to show an operator next to the field path.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s|m|h)?\s*$")
_DURATION_SCALE = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB|k|K|M|G)?\s*$")
_SIZE_SCALE = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def parse_duration(value: object) -> float:
    """Return the duration in seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms, 10s or 5m, got a boolean")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration like 250ms, 10s or 5m, got {value!r}")
        seconds = float(match.group(1)) * _DURATION_SCALE[match.group(2)]
    else:
        raise ValueError(f"expected a duration like 250ms, 10s or 5m, got {type(value).__name__}")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def parse_size(value: object) -> int:
    """Return the size in bytes (int)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 16MiB or 4096, got a boolean")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float) and value.is_integer():
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"expected a size like 16MiB, 64KiB or 4096, got {value!r}")
        size = int(float(match.group(1)) * _SIZE_SCALE[match.group(2)])
    else:
        raise ValueError(f"expected a size like 16MiB or 4096, got {type(value).__name__}")
    if size < 0:
        raise ValueError("must not be negative")
    return size
