"""One cached answer, as the client received it."""

from __future__ import annotations

from dataclasses import dataclass

# What an entry costs beyond its bytes (the object, its key, the LRU's link), counted so that
# many tiny answers cannot hold far more memory than max_bytes says.
ENTRY_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """``chunks``: a streamed answer's SSE events, one per chunk, each with its blank-line
    terminator (replayed one write each, so a cached stream is still a stream); a whole
    answer is one chunk, its body."""

    status: int
    content_type: str
    streamed: bool
    chunks: tuple[bytes, ...]

    @property
    def body_bytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    @property
    def size_bytes(self) -> int:
        return self.body_bytes + len(self.content_type) + ENTRY_OVERHEAD_BYTES
