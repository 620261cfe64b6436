"""What every tailgate process does the same way: logging set-up and running its event loop."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import logging.handlers
import queue
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

from gateway.access_log import ACCESS_LOGGER, AccessWriter

T = TypeVar("T")


def setup_logging(level: str, tag: str = "") -> None:
    """Diagnostics to stderr (``tag`` marks a worker's lines); the JSON access log to stdout.

    Records are formatted and written by a thread of their own (a ``QueueListener``; the access
    log has its own, ``gateway.access_log.AccessWriter``): the event loop only puts them on a
    queue, so a slow terminal or pipe never stalls requests. Writing the access log straight to
    a terminal at 1,000 requests/s held the loop for milliseconds at a time; that was the
    open-loop p99 a new user saw with the shipped defaults.
    """
    diagnostics = _UnflushedHandler(sys.stderr)
    diagnostics.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")
    )
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = _DrainingListener(records, diagnostics)
    root = logging.getLogger()
    root.handlers[:] = [_PlainQueueHandler(records)]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    access = logging.getLogger(ACCESS_LOGGER)
    for old in list(access.handlers):
        access.removeHandler(old)
        old.close()
    writer = AccessWriter(sys.stdout)  # the access log's own thread (gateway.access_log)
    access.addHandler(writer)
    access.propagate = False
    writer.start()
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # httpx logs every request at INFO: `tailgate up`'s readiness polls would flood the terminal.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    listener.start()
    atexit.register(listener.stop)  # flush what is queued before the process exits
    atexit.register(writer.close)


class _PlainQueueHandler(logging.handlers.QueueHandler):
    """Queues a record as it is when its message is already one string: no copy and no
    formatting on the event loop (``QueueHandler.prepare`` does both for every record). Any other
    record (arguments, an exception, a stack, a message that is an object) is prepared as
    usual, so nothing is formatted lazily on the writer thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if type(record.msg) is not str or record.args or record.exc_info or record.stack_info:
            return super().prepare(record)
        return record


class _UnflushedHandler(logging.StreamHandler):
    """A stream handler that leaves flushing to :class:`_DrainingListener`."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _DrainingListener(logging.handlers.QueueListener):
    """Flushes its handlers whenever the queue runs dry: one write per burst of diagnostics
    under load (not one per line, which keeps a writer thread busy competing with the event
    loop for the interpreter), and at once when lines come one at a time."""

    def __init__(
        self, records: queue.SimpleQueue[logging.LogRecord], *handlers: logging.Handler
    ) -> None:
        super().__init__(records, *handlers, respect_handler_level=True)
        self._records = records

    def handle(self, record: logging.LogRecord) -> None:
        super().handle(record)
        if self._records.empty():
            self._flush()

    def stop(self) -> None:
        super().stop()
        self._flush()  # the last burst, queued ahead of the stop sentinel

    def _flush(self) -> None:
        for handler in self.handlers:
            handler.flush()


def settle_heap() -> None:
    """Take what start-up allocated out of the cyclic collector's way, once serving.

    Modules, config, aiohttp and prometheus objects (about 44,000 tracked objects) live as
    long as the process; left in place, every full collection walks them again: 18 ms pauses
    measured under load, under 1 ms after freezing. New garbage is still collected as usual.
    """
    gc.collect()
    gc.freeze()


def run_loop(coro: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """Run ``coro`` to completion on uvloop (unless turned off or missing), else asyncio's."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            logging.getLogger("tailgate").warning("uvloop not installed; using asyncio's loop")
        else:
            result: T = uvloop.run(coro)
            return result
    return asyncio.run(coro)
