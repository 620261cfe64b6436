"""Bounded JSON: hostile nesting fails cleanly (TooDeep), never a RecursionError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.jsonscan import TooDeep, parse_json
from gateway.routing import find_model

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\,: '),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


def test_a_hundred_thousand_deep_body_is_refused_without_recursing() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(TooDeep):
        parse_json(deep)
    assert find_model(b'{"model": ' + deep + b"}").undecided == "too_deep"


@given(value=json_values)
def test_parse_json_is_json_loads_below_the_recursion_limit(value: object) -> None:
    assert parse_json(json.dumps(value).encode()) == value


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]
)
def test_parse_json_reads_every_encoding_json_loads_reads(encoding: str) -> None:
    value = {"model": "m\u00e9", "messages": [{"content": "\u2603 \U0001f600"}]}
    assert parse_json(json.dumps(value, ensure_ascii=False).encode(encoding)) == value


@given(body=st.binary(max_size=40).map(lambda b: b"{" + b))
def test_parse_json_fails_where_json_loads_fails(body: bytes) -> None:
    try:
        expected: object = json.loads(body)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            parse_json(body)
    else:
        assert parse_json(body) == expected


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
