"""The access log: one JSON line per request, formatted and written off the event loop.

The handler hands over an :class:`AccessEntry` (a tuple: no ``LogRecord``, no JSON on the
loop). In a tailgate process, :func:`gateway.process.setup_logging` gives the
``tailgate.access`` logger one :class:`AccessWriter`; entries then go straight onto its
queue, and its thread formats and writes them in batches. Through ``Logger.info`` each line
cost more than the JSON itself (the caller lookup and the record: ~25 us a request under
load), and a writer woken per line competed with the loop for the interpreter. Anywhere else
(tailgate embedded in another program, tests capturing logs) the line goes through the
logger as an ordinary record, so any handler sees the same text.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import NamedTuple, TextIO

ACCESS_LOGGER = "tailgate.access"

# Under load, one wake-up of the writer per this many seconds (not one per request); a line
# after a quiet spell is written at once.
BATCH_WINDOW_S = 0.05


class AccessEntry(NamedTuple):
    """What one access-log line says (its JSON keys, in order)."""

    id: str
    method: str
    path: str
    route: str
    backend: str
    status: int
    latency_ms: float
    tries: int
    trace_id: str
    error: str | None
    model_undecided: str | None  # a key of the line only when set
    stream_break: str | None  # likewise: how a body that broke after its first byte ended


def format_line(entry: AccessEntry) -> str:
    """The entry as its one-line JSON object."""
    fields = entry._asdict()
    if entry.model_undecided is None:
        del fields["model_undecided"]
    if entry.stream_break is None:
        del fields["stream_break"]
    return json.dumps(fields, separators=(",", ":"))


class AccessLog:
    """Where the handler sends each request's entry (see the module docstring)."""

    def __init__(self) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)

    def write(self, entry: AccessEntry) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handlers = logger.handlers
        if len(handlers) == 1 and not logger.propagate:
            writer = handlers[0]
            if isinstance(writer, AccessWriter):
                writer.put(entry)
                return
        logger.info(format_line(entry))


class AccessWriter(logging.Handler):
    """Writes access lines to ``stream`` from a thread of its own, a batch at a time, flushed
    when its queue runs dry. Takes entries (:meth:`put`) and ordinary records alike, in the
    order they came."""

    _STOP = object()

    def __init__(self, stream: TextIO, batch_window_s: float = BATCH_WINDOW_S) -> None:
        super().__init__()
        self._stream = stream
        self._batch_window_s = batch_window_s
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def put(self, entry: AccessEntry) -> None:
        self._queue.put(entry)

    def emit(self, record: logging.LogRecord) -> None:
        self._queue.put(record.getMessage())

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(self._STOP)
            thread.join()
        super().close()

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while True:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            lines = [
                format_line(item) if isinstance(item, AccessEntry) else str(item)
                for item in batch
                if item is not self._STOP
            ]
            try:
                if lines:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
            except (OSError, ValueError):  # the stream went away: keep draining, as logging does
                pass
            if any(item is self._STOP for item in batch):
                return
            time.sleep(self._batch_window_s)
