"""Recording an answer while it is relayed, so the client never waits for the cache.

:class:`CapturingBody` wraps the upstream body the handler reads chunk by chunk: every chunk
goes on to the client unchanged and into a :class:`Recorder`; when the body ends cleanly the
recording is handed over. A body that breaks off, or a client that leaves, never ends cleanly,
so a cut-off answer is never kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.cache.entry import ENTRY_OVERHEAD_BYTES, CachedResponse
from gateway.cache.sse import EventSplitter


class ChunkSource(Protocol):
    """A body read chunk by chunk; ``b""`` at its end."""

    async def readany(self) -> bytes: ...


def is_event_stream(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


class Recorder:
    """An answer's chunks as SSE events (a stream) or one body, up to ``max_bytes``."""

    def __init__(self, status: int, content_type: str, max_bytes: int) -> None:
        self.status = status
        self.content_type = content_type  # the header's whole value, parameters included
        self.streamed = is_event_stream(content_type)
        self._budget = max_bytes - len(content_type) - ENTRY_OVERHEAD_BYTES
        self._parts: list[bytes] = []
        self._splitter = EventSplitter() if self.streamed else None
        self.overflowed = self._budget < 0

    def feed(self, chunk: bytes) -> None:
        if self.overflowed:
            return
        self._budget -= len(chunk)
        if self._budget < 0:
            self.overflowed = True
            self._parts.clear()  # over the per-entry limit: relayed, not kept
            return
        if self._splitter is not None:
            self._parts.extend(self._splitter.feed(chunk))
        else:
            self._parts.append(chunk)

    def finish(self) -> CachedResponse | None:
        if self.overflowed:
            return None
        if self._splitter is not None:
            rest = self._splitter.rest()
            chunks = (*self._parts, rest) if rest else tuple(self._parts)
        else:
            chunks = (b"".join(self._parts),)
        return CachedResponse(self.status, self.content_type, self.streamed, chunks)


class CapturingBody:
    """``source``, read through: each chunk recorded on its way; ``on_complete`` once at the
    clean end, with the answer (None when it was too large to keep)."""

    __slots__ = ("_done", "_on_complete", "_recorder", "_source")

    def __init__(
        self,
        source: ChunkSource,
        recorder: Recorder,
        on_complete: Callable[[CachedResponse | None], None],
    ) -> None:
        self._source = source
        self._recorder = recorder
        self._on_complete = on_complete
        self._done = False

    async def readany(self) -> bytes:
        chunk = await self._source.readany()
        if chunk:
            self._recorder.feed(chunk)
        elif not self._done:
            self._done = True
            self._on_complete(self._recorder.finish())
        return chunk
