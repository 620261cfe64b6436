"""Tenant identity, keys, token buckets and usage counting: the pure parts of admission."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.config import parse_config
from gateway.config.model import RateLimitConfig
from gateway.pending_queue import Priority
from gateway.request_parse import parse_request
from gateway.tenants.identity import ANONYMOUS, Identified, TenantDirectory, Unauthorized
from gateway.tenants.keys import KeysFile, bearer_token, key_hash, upstream_authorization
from gateway.tenants.rate_limit import LocalLimiter, retry_after_header
from gateway.tenants.usage import estimate_tokens, tokens_used

BASE = "backends: [{url: 'http://127.0.0.1:9'}]\n"


def directory(extra: str, keys_file: KeysFile | None = None) -> TenantDirectory:
    return TenantDirectory(parse_config(BASE + extra).admission, keys_file)


def test_header_tenant_and_priority() -> None:
    d = directory("")
    found = d.identify({"X-Tenant": "team-a", "X-Priority": "CRITICAL"})
    assert isinstance(found, Identified)
    assert (found.tenant.name, found.priority) == ("team-a", Priority.CRITICAL)
    anonymous = d.identify({"X-Priority": "nonsense"})
    assert isinstance(anonymous, Identified)
    assert (anonymous.tenant.name, anonymous.priority) == (ANONYMOUS, Priority.STANDARD)


def test_header_named_tenants_are_bounded() -> None:
    from gateway.tenants import identity

    d = directory("")
    names = set()
    for i in range(identity.MAX_HEADER_TENANTS + 5):
        found = d.identify({"X-Tenant": f"t{i}"})
        assert isinstance(found, Identified)
        names.add(found.tenant.name)
    assert len(names) == identity.MAX_HEADER_TENANTS + 1 and identity.OVERFLOW in names


def test_api_keys_name_the_tenant_and_cap_its_class(tmp_path: Path) -> None:
    d = directory(
        "admission:\n  api_keys: {enabled: true}\n  tenants:\n"
        f"    - {{name: batch, api_keys: ['{key_hash('k-batch')}'], priority: sheddable}}\n"
    )
    found = d.identify({"Authorization": "Bearer k-batch", "X-Priority": "critical"})
    assert isinstance(found, Identified)
    assert (found.tenant.name, found.priority) == ("batch", Priority.SHEDDABLE)
    assert isinstance(d.identify({"Authorization": "Bearer nope"}), Unauthorized)
    assert isinstance(d.identify({"X-Tenant": "batch"}), Unauthorized)


def test_keys_file_reloads_and_keeps_the_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"team-a: ['{key_hash('one')}']\n")
    keys = KeysFile(str(path))
    assert keys.hashes == {key_hash("one"): "team-a"}
    path.write_text(f"team-b: ['{key_hash('two')}']\n")
    import os

    os.utime(path, ns=(1, 10**18))
    assert keys.reload_if_changed() and keys.hashes == {key_hash("two"): "team-b"}
    path.write_text("team-b: not-a-list\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert not keys.reload_if_changed() and keys.hashes == {key_hash("two"): "team-b"}


def test_config_rejects_bad_hashes_and_duplicate_tenants() -> None:
    import pytest

    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"admission.tenants\[0\].api_keys.*SHA-256"):
        parse_config(BASE + "admission: {tenants: [{name: a, api_keys: [secret]}]}\n")
    with pytest.raises(ConfigError, match=r"tenants\[1\].name: already used"):
        parse_config(BASE + "admission: {tenants: [{name: a}, {name: a}]}\n")


def test_bearer_and_forwarding_rules() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None
    assert upstream_authorization("Bearer c", False, None) is None
    assert upstream_authorization("Bearer c", True, None) == "Bearer c"
    assert upstream_authorization("Bearer c", True, "b") == "Bearer b"


def test_token_bucket_refuses_with_a_retry_after_that_works() -> None:
    limiter = LocalLimiter()
    limits = RateLimitConfig(tokens_per_minute=600)  # 10 tokens a second
    assert limiter.admit("a", limits, 500, now=0.0).admitted
    refused = limiter.admit("a", limits, 200, now=0.0)
    assert not refused.admitted and refused.limit == "tokens"
    assert abs(refused.retry_after_s - 10.0) < 1e-9  # 100 left, 100 more at 10/s
    assert not limiter.admit("a", limits, 200, now=9.0).admitted
    assert limiter.admit("a", limits, 200, now=10.0).admitted
    assert limiter.admit("b", limits, 10_000, now=10.0).admitted  # others have their own


def test_settle_gives_back_what_the_estimate_overcharged() -> None:
    limiter = LocalLimiter()
    limits = RateLimitConfig(tokens_per_minute=1000)
    assert limiter.admit("a", limits, 900, now=0.0).admitted
    assert not limiter.admit("a", limits, 500, now=0.0).admitted
    limiter.settle("a", estimated=900, actual=100, now=0.0)
    assert limiter.admit("a", limits, 500, now=0.0).admitted


def test_request_rate_limit() -> None:
    limiter = LocalLimiter()
    limits = RateLimitConfig(requests_per_minute=2)
    assert [limiter.admit("a", limits, 0, 0.0).admitted for _ in range(2)] == [True, True]
    refused = limiter.admit("a", limits, 0, 0.0)
    assert refused.limit == "requests" and retry_after_header(refused.retry_after_s) == "30"
    assert limiter.admit("a", limits, 0, 30.0).admitted


def test_estimate_from_the_body() -> None:
    def estimate(payload: object) -> int | None:
        return estimate_tokens(parse_request(json.dumps(payload).encode(), {}))

    chat = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert estimate(chat) == 102 + 50  # "user: " + 400 characters, about 4 a token
    assert estimate({"prompt": "y" * 40}) == 10 + 256  # no max_tokens: a typical answer
    assert estimate_tokens(parse_request(b"not json", {})) is None


def test_tokens_used_from_the_answer() -> None:
    from gateway.llm_stream import AnswerObserver

    whole = AnswerObserver(streamed=False, started_at=0.0)
    body = json.dumps(
        {"choices": [{"text": "ok"}], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}
    ).encode()
    whole.feed(body[:10], 0.1)
    whole.feed(body[10:], 0.1)
    assert tokens_used(whole.finish(0.2), prompt_estimate=99) == 12

    stream = AnswerObserver(streamed=True, started_at=0.0)
    for i in range(3):
        stream.feed(f'data: {{"choices": [{{"text": "t{i}"}}]}}\n\n'.encode(), 0.1)
    stream.feed(b"data: [DONE]\n\n", 0.2)
    assert tokens_used(stream.finish(0.2), prompt_estimate=20) == 23  # estimate + 3 events

    not_an_answer = AnswerObserver(streamed=False, started_at=0.0)
    not_an_answer.feed(b'{"backend": "pod0"}', 0.1)
    assert tokens_used(not_an_answer.finish(0.1), prompt_estimate=20) is None
