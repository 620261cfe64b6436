"""What the gateway answers itself before routing: requests it cannot frame or forward safely.

A reverse proxy must only forward what it can frame the same way as the backend will. A
``CONNECT`` asks for a tunnel (no body framing at all: forwarding it desynchronised pooled
upstream connections), ``TRACE`` reflects the request (and its credentials) back, an unknown
method has no known body semantics, and a request-target with ``.`` or ``..`` segments routes
on one path while the backend may resolve another. HTTP/0.9 and HTTP/2 request lines on an
HTTP/1 connection are not HTTP/1.1 and get 505, not a forwarded answer in a made-up version.

Pure: it reads the request line's parts and returns the answer to give, or None to forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORWARDED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ALLOW = ", ".join(sorted(FORWARDED_METHODS))
_NOT_FORWARDED = frozenset({"CONNECT", "TRACE"})  # known methods a proxy must not pass on
_DOT_SEGMENTS = frozenset({".", ".."})


@dataclass(frozen=True)
class LocalAnswer:
    """An answer the gateway gives without a backend; ``kind`` is empty for a success."""

    status: int
    kind: str = ""
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def local_answer(
    method: str, raw_target: str, decoded_path: str, version_ok: bool
) -> LocalAnswer | None:
    """The gateway's own answer to a request it will not forward, or None to forward it.

    ``raw_target`` is the request-target as sent, ``decoded_path`` the percent-decoded path
    that routes match on.
    """
    if not version_ok:
        return LocalAnswer(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1")
    if method in _NOT_FORWARDED:
        return LocalAnswer(
            405, "method_not_allowed", f"{method} is not forwarded", {"Allow": ALLOW}
        )
    if method not in FORWARDED_METHODS:
        return LocalAnswer(501, "not_implemented", "unknown request method", {"Allow": ALLOW})
    if raw_target == "*":
        if method == "OPTIONS":  # a question about the gateway itself (RFC 9110 §9.3.7)
            return LocalAnswer(204, headers={"Allow": ALLOW})
        return LocalAnswer(400, "bad_request", "'*' is a request-target only for OPTIONS")
    if "/." in decoded_path and any(s in _DOT_SEGMENTS for s in decoded_path.split("/")):
        return LocalAnswer(400, "bad_request", "ambiguous path: '.' or '..' segment")
    return None
