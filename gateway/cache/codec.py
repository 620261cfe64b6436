"""Cached answers as bytes for the shared store: a JSON header line, then the chunks.

Anything that does not decode (another version's format, a truncated value) reads as absent:
the request is then simply forwarded.
"""

from __future__ import annotations

import json

from gateway.cache.entry import CachedResponse

FORMAT_VERSION = 1


def encode(entry: CachedResponse) -> bytes:
    header = {
        "v": FORMAT_VERSION,
        "status": entry.status,
        "type": entry.content_type,
        "streamed": entry.streamed,
        "sizes": [len(chunk) for chunk in entry.chunks],
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + b"".join(entry.chunks)


def decode(data: bytes) -> CachedResponse | None:
    line, newline, payload = data.partition(b"\n")
    if not newline:
        return None
    try:
        header = json.loads(line)
        if header["v"] != FORMAT_VERSION:
            return None
        sizes = [int(size) for size in header["sizes"]]
        status, content_type = int(header["status"]), str(header["type"])
        streamed = bool(header["streamed"])
    except (ValueError, KeyError, TypeError):
        return None
    if sum(sizes) != len(payload) or any(size < 0 for size in sizes):
        return None
    chunks, at = [], 0
    for size in sizes:
        chunks.append(payload[at : at + size])
        at += size
    return CachedResponse(status, content_type, streamed, tuple(chunks))
