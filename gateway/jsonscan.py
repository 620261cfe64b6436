"""JSON from clients, parsed within bounds: nesting fails cleanly instead of crashing a request.

``json.loads`` recurses once per nesting level in C and checks the interpreter's recursion
limit as it goes, so a 100,000-deep body raises ``RecursionError`` after ~1,000 levels, at C
speed: caught here, it is a refusal (:class:`TooDeep`), never a 500 with a traceback. A
bracket pre-scan (strings cut out, empty pairs removed per pass) was measured and dropped: 5-70 s
on a 16 MB body of brackets. Sizes are the caller's to bound (bodies are read under
``limits.max_body``). Every JSON load of the request path goes through :func:`parse_json`.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator


class TooDeep(ValueError):
    """The JSON text nests deeper than allowed."""


# Bodies up to this size are parsed with the collector left as it is (see parse_json).
_PARSE_WITH_COLLECTOR_BYTES = 64 * 1024


def parse_json(body: bytes) -> object:
    """``json.loads`` that raises :class:`TooDeep` instead of ``RecursionError``.

    The cyclic garbage collector is paused for the parse: it allocates only acyclic
    containers, so a collection can free nothing, yet on a body of many small arrays the
    collector's passes cost ten times the parse (5M empty arrays, 15 MB: 7.1 s against
    0.64 s). The parse is synchronous, so nothing else runs meanwhile. A small body (the
    usual inference request) cannot allocate enough to start a collection worth pausing, so
    it is parsed without the pause and its context manager (~1% of a request's samples).
    """
    text = _as_text(body)
    try:
        if len(body) <= _PARSE_WITH_COLLECTOR_BYTES:
            return json.loads(text)
        with _collector_paused():
            return json.loads(text)
    except RecursionError:
        raise TooDeep("JSON nests deeper than the parser allows") from None


def _as_text(body: bytes) -> str | bytes:
    """The body decoded as ``json.loads`` would decode it, without its encoding sniffing: a
    JSON object or array whose second byte is not NUL is UTF-8 to ``json.detect_encoding``
    (a pure-Python function, a third of a small answer's parse). Anything else is left to
    ``json.loads``. Bad UTF-8 raises ``UnicodeDecodeError``, a ``ValueError``, as it would."""
    if body[:1] in (b"{", b"[") and body[1:2] != b"\x00":
        return body.decode("utf-8", "surrogatepass")
    return body


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()
