"""What the gateway answers itself: methods, request-targets and versions it cannot forward."""

from __future__ import annotations

import pytest

from gateway.framing import FORWARDED_METHODS, local_answer


@pytest.mark.parametrize("method", sorted(FORWARDED_METHODS))
def test_ordinary_requests_are_forwarded(method: str) -> None:
    assert local_answer(method, "/v1/chat/completions?x=1", "/v1/chat/completions", True) is None


@pytest.mark.parametrize(
    ("method", "target", "path", "version_ok", "status"),
    [
        ("CONNECT", "example.com:443", "/", True, 405),
        ("TRACE", "/", "/", True, 405),
        ("PROPFIND", "/", "/", True, 501),
        ("GET", "/", "/", False, 505),
        ("OPTIONS", "*", "*", True, 204),
        ("GET", "*", "*", True, 400),
        ("GET", "/v2/../v1/x", "/v2/../v1/x", True, 400),
        ("GET", "/v1/%2e%2e/x", "/v1/../x", True, 400),
        ("GET", "/./x", "/./x", True, 400),
    ],
)
def test_requests_the_gateway_answers_itself(
    method: str, target: str, path: str, version_ok: bool, status: int
) -> None:
    answer = local_answer(method, target, path, version_ok)
    assert answer is not None and answer.status == status
    if status >= 400:
        assert answer.kind and answer.message


def test_dots_inside_a_segment_are_ordinary() -> None:
    assert local_answer("GET", "/v1/a..b/.well-known", "/v1/a..b/.well-known", True) is None
