"""The in-process store (LRU by bytes and entries, TTL, per-entry limit) and what it holds:
SSE events cut from arbitrary chunks, the recorder's size limit, the shared-store codec."""

from __future__ import annotations

import pytest

from gateway.cache import codec
from gateway.cache.capture import Recorder
from gateway.cache.entry import ENTRY_OVERHEAD_BYTES, CachedResponse
from gateway.cache.sse import EventSplitter
from gateway.cache.store import MemoryStore, StoreLimits

JSON = "application/json"


def _entry(body: bytes) -> CachedResponse:
    return CachedResponse(200, JSON, False, (body,))


def _size(body: bytes) -> int:
    return _entry(body).size_bytes


def _store(max_bytes: int = 1 << 20, max_entries: int = 100, max_entry: int = 1 << 20):
    evictions: list[str] = []
    store = MemoryStore(StoreLimits(max_bytes, max_entries, max_entry), evictions.append)
    return store, evictions


def test_least_recently_used_goes_first_when_entries_run_out() -> None:
    store, evictions = _store(max_entries=2)
    store.put("a", _entry(b"A"), 100.0, 0.0)
    store.put("b", _entry(b"B"), 100.0, 0.0)
    assert store.get("a", 1.0) is not None  # "a" is now the most recently used
    store.put("c", _entry(b"C"), 100.0, 2.0)
    assert store.get("b", 3.0) is None
    assert store.get("a", 3.0) is not None and store.get("c", 3.0) is not None
    assert evictions == ["size"]


def test_bytes_bound_evicts_until_it_fits() -> None:
    body = b"x" * 1000
    store, evictions = _store(max_bytes=2 * _size(body) + 10)
    for key in "abc":
        assert store.put(key, _entry(body), 100.0, 0.0)
    assert len(store) == 2 and store.bytes_held == 2 * _size(body)
    assert store.get("a", 0.0) is None
    assert evictions == ["size"]


def test_entries_expire_at_their_time() -> None:
    store, evictions = _store()
    store.put("a", _entry(b"A"), 10.0, 0.0)
    assert store.get("a", 9.9) is not None
    assert store.get("a", 10.0) is None
    assert len(store) == 0 and store.bytes_held == 0
    assert evictions == ["expired"]


def test_an_entry_over_the_per_entry_limit_is_not_kept() -> None:
    store, evictions = _store(max_entry=ENTRY_OVERHEAD_BYTES + 100)
    assert not store.put("big", _entry(b"x" * 200), 10.0, 0.0)
    assert store.put("small", _entry(b"x" * 10), 10.0, 0.0)
    assert len(store) == 1 and evictions == []


def test_replacing_a_key_counts_its_bytes_once() -> None:
    store, _ = _store()
    store.put("a", _entry(b"x" * 10), 10.0, 0.0)
    store.put("a", _entry(b"x" * 20), 10.0, 0.0)
    assert len(store) == 1 and store.bytes_held == _size(b"x" * 20)


def test_resize_drops_what_no_longer_fits() -> None:
    store, evictions = _store()
    for key in "abcd":
        store.put(key, _entry(b"x"), 10.0, 0.0)
    store.resize(StoreLimits(1 << 20, 2, 1 << 20), 1.0)
    assert len(store) == 2 and evictions == ["size", "size"]


@pytest.mark.parametrize("cut", [1, 3, 7, 1000])
def test_events_are_cut_whole_wherever_chunks_split_them(cut: int) -> None:
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\n: comment\n\ndata: [DONE]\n\n'
    splitter = EventSplitter()
    events = []
    for at in range(0, len(stream), cut):
        events += splitter.feed(stream[at : at + cut])
    assert events == [
        b'data: {"a": 1}\n\n',
        b'data: {"b": 2}\r\n\r\n',
        b": comment\n\n",
        b"data: [DONE]\n\n",
    ]
    assert splitter.rest() == b""


def test_recorder_keeps_an_unterminated_tail_so_replay_is_exact() -> None:
    recorder = Recorder(200, "text/event-stream; charset=utf-8", 1 << 20)
    for chunk in (b"data: 1\n", b"\ndata: 2\n\nda", b"ta: tail"):
        recorder.feed(chunk)
    entry = recorder.finish()
    assert entry is not None and entry.streamed
    assert entry.chunks == (b"data: 1\n\n", b"data: 2\n\n", b"data: tail")


def test_recorder_gives_up_past_the_per_entry_limit() -> None:
    recorder = Recorder(200, JSON, ENTRY_OVERHEAD_BYTES + len(JSON) + 10)
    recorder.feed(b"x" * 6)
    recorder.feed(b"x" * 6)
    assert recorder.finish() is None


def test_whole_answer_is_one_chunk() -> None:
    recorder = Recorder(200, JSON, 1 << 20)
    recorder.feed(b'{"a":')
    recorder.feed(b" 1}")
    assert recorder.finish() == _entry(b'{"a": 1}')


def test_codec_round_trips_and_refuses_damaged_values() -> None:
    entry = CachedResponse(200, "text/event-stream", True, (b"data: 1\n\n", b"data: \n2\n\n"))
    data = codec.encode(entry)
    assert codec.decode(data) == entry
    assert codec.decode(data[:-1]) is None
    assert codec.decode(b"garbage") is None
    assert codec.decode(b'{"v": 99}\n') is None
