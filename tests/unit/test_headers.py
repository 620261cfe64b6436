"""Header filtering: what one direction of the proxy passes on, whatever the spelling."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import _MAX_REMEMBERED_NAMES, HeaderFilter, end_to_end


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_hop_by_hop_proxy_and_dropped_names_stop_in_any_spelling() -> None:
    headers = _headers(
        ("Accept", "*/*"), ("KEEP-ALIVE", "5"), ("Proxy-Foo", "x"), ("HOST", "a"),
        ("x-custom", "1"), ("X-Custom", "2"),
    )  # fmt: skip
    kept = HeaderFilter(frozenset({"host"})).pairs(headers)
    assert kept == [("Accept", "*/*"), ("x-custom", "1"), ("X-Custom", "2")]


def test_names_in_connection_stop_for_that_message_only() -> None:
    header_filter = HeaderFilter()
    named = _headers(("Connection", "close, X-Secret"), ("X-Secret", "s"), ("X-Other", "o"))
    assert header_filter.pairs(named) == [("X-Other", "o")]
    plain = _headers(("X-Secret", "s"))
    assert header_filter.pairs(plain) == [("X-Secret", "s")]  # not remembered as dropped


def test_the_verdict_is_the_same_past_the_names_it_remembers() -> None:
    header_filter = HeaderFilter()
    many = [(f"X-N{i}", "v") for i in range(_MAX_REMEMBERED_NAMES + 50)]
    kept = header_filter.pairs(_headers(*many, ("TE", "trailers"), ("Upgrade", "h2c")))
    assert kept == many
    assert header_filter.pairs(_headers(("Te", "trailers"), ("X-Late", "1"))) == [("X-Late", "1")]


def test_end_to_end_copies_into_a_new_multidict() -> None:
    source = CIMultiDict([("Accept", "a"), ("Transfer-Encoding", "chunked")])
    copy = end_to_end(source, drop=frozenset({"accept"}))
    assert list(copy.items()) == [] and "Accept" in source
    assert list(end_to_end(source).items()) == [("Accept", "a")]
