"""Bounded JSON: depth checked before the parser recurses, so hostile nesting fails cleanly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.jsonscan import depth_within, load_json_bounded
from gateway.routing import find_model


def depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\,: '),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(value=json_values, limit=st.integers(min_value=1, max_value=8))
def test_the_depth_bound_agrees_with_the_parsed_depth(value: object, limit: int) -> None:
    body = json.dumps(value).encode()
    assert depth_within(value, limit) == (depth(value) <= limit)
    assert (load_json_bounded(body, limit) is not None or value is None) == (depth(value) <= limit)


def test_a_hundred_thousand_deep_body_is_refused_without_recursing() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert load_json_bounded(deep, 10_000) is None
    assert find_model(b'{"model": ' + deep + b"}").undecided == "too_deep"


@pytest.mark.parametrize(
    ("body", "model", "undecided"),
    [
        (b'{"model": "m", "messages": [{"role": "user", "content": "[{"}]}', "m", None),
        (b'{"messages": []}', None, None),
        (b'{"model": 7}', None, None),
        (b"[1, 2]", None, "not_json"),
        (b"not json", None, "not_json"),
        (b'{"model": "m"', None, "not_json"),
        (b"", None, None),
    ],
)
def test_find_model_reads_the_top_level_model_or_says_why_not(
    body: bytes, model: str | None, undecided: str | None
) -> None:
    lookup = find_model(body)
    assert (lookup.model, lookup.undecided) == (model, undecided)


def test_deep_but_sane_bodies_still_route() -> None:
    nested = "[" * 200 + "]" * 200
    assert find_model(f'{{"model": "m", "x": {nested}}}'.encode()).model == "m"
