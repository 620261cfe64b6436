"""Server-sent events cut out of a byte stream as it arrives (chunks split events anywhere)."""

from __future__ import annotations

# An event ends at a blank line; backends write either line ending.
_TERMINATORS = (b"\n\n", b"\r\n\r\n")


class EventSplitter:
    """Feed chunks, get whole events back (each with its terminator); the concatenation of
    every event returned, plus :meth:`rest`, is exactly the bytes fed."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer + chunk
        events: list[bytes] = []
        start = 0
        while True:
            end = _event_end(buffer, start)
            if end < 0:
                break
            events.append(buffer[start:end])
            start = end
        self._buffer = buffer[start:]
        return events

    def rest(self) -> bytes:
        """Bytes after the last whole event (an unterminated tail), kept so nothing is lost."""
        return self._buffer


def _event_end(buffer: bytes, start: int) -> int:
    """The index just past the first event terminator at or after ``start``, or -1."""
    best = -1
    for terminator in _TERMINATORS:
        at = buffer.find(terminator, start)
        if at >= 0 and (best < 0 or at + len(terminator) < best):
            best = at + len(terminator)
    return best
