"""What every tailgate process does the same way: logging set-up and running its event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def setup_logging(level: str, tag: str = "") -> None:
    """Diagnostics to stderr (``tag`` marks a worker's lines); the JSON access log to stdout."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
        stream=sys.stderr,
    )
    access = logging.getLogger("tailgate.access")
    access.propagate = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # httpx logs every request at INFO: `tailgate up`'s readiness polls would flood the terminal.
    logging.getLogger("httpx").setLevel(logging.WARNING)


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
