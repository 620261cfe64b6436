"""JSON from clients, parsed within bounds: a depth limit checked before the parser runs.

``json.loads`` recurses once per nesting level, so a 100,000-deep body raises
``RecursionError`` (a 500, and a traceback) instead of failing cleanly. The depth is checked
first, at C speed: string literals are cut out, every byte but brackets is deleted, and empty
``[]``/``{}`` pairs are removed one nesting level per pass; a body still holding brackets after
``max_depth`` passes nests deeper than that. Sizes are the caller's to bound (the body is read
under ``limits.max_body``).
"""

from __future__ import annotations

import json
import re

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_within(body: bytes, max_depth: int) -> bool:
    """Is ``body`` (JSON text) nested at most ``max_depth`` arrays/objects deep?

    Malformed bracketing counts as too deep: the parser would refuse it anyway.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        if not brackets:
            return True
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            return False  # nothing closes where it opens: not JSON
        brackets = shorter
    return not brackets


def load_json_bounded(body: bytes, max_depth: int) -> object | None:
    """The JSON value in ``body``, or None if it is not JSON or nests over ``max_depth``."""
    if not nesting_within(body, max_depth):
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: below a lowered recursion limit
        return None
