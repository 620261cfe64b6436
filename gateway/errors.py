"""Every error answer the gateway produces itself: a small JSON body, never a stack trace.

The body is ``{"error": {"type": ..., "message": ..., "request_id": ...}}`` so clients (and the
OpenAI SDKs, which read ``error.message``) get something useful, and operators can grep logs for
the request id.
"""

from __future__ import annotations

import json

from aiohttp import web

GATEWAY_ERROR_HEADER = "X-Tailgate-Error"
SHED_HEADER = "X-Tailgate-Shed"


def error_body(
    kind: str, message: str, request_id: str | None = None, code: str | None = None
) -> bytes:
    """``code`` adds OpenAI's ``code`` and ``param`` fields (``invalid_api_key``,
    ``rate_limit_exceeded``), which the OpenAI SDKs map to their typed errors."""
    error: dict[str, str | None] = {"type": kind, "message": message}
    if code is not None:
        error["code"] = code
        error["param"] = None
    if request_id:
        error["request_id"] = request_id
    return json.dumps({"error": error}).encode()


def error_response(
    status: int,
    kind: str,
    message: str,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    code: str | None = None,
) -> web.Response:
    """A JSON error answered by the gateway (``X-Tailgate-Error`` tells it from an upstream's)."""
    all_headers = {GATEWAY_ERROR_HEADER: code or kind}
    if headers:
        all_headers.update(headers)
    return web.Response(
        status=status,
        body=error_body(kind, message, request_id, code),
        content_type="application/json",
        headers=all_headers,
    )


def shed_response(reason: str, request_id: str | None, retry_after_s: float = 1.0) -> web.Response:
    """503 for load the gateway chose not to send upstream: clients should back off and retry."""
    return error_response(
        503,
        "overloaded",
        reason,
        request_id,
        headers={"Retry-After": str(max(1, round(retry_after_s))), SHED_HEADER: "1"},
    )


def raw_error(status: int, reason: str, kind: str, message: str) -> bytes:
    """A whole HTTP/1.1 error response as bytes, for answers sent before there is a request."""
    body = error_body(kind, message)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{GATEWAY_ERROR_HEADER}: {kind}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
