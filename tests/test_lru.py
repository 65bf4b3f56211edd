"""The project's one bounded LRU cache: bounds by count and bytes, recency, eviction callback, thread safety."""

from __future__ import annotations

import threading

import pytest

from decaf_backend.lru import BoundedCache


def test_count_bound_evicts_least_recently_used() -> None:
    evicted: list[tuple[str, int]] = []
    cache: BoundedCache[str, int] = BoundedCache(max_items=2, on_evict=lambda k, v: evicted.append((k, v)))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.keys() == ["a", "c"]
    assert evicted == [("b", 2)]
    assert cache.stats.evictions == 1 and cache.stats.hits == 1


def test_byte_bound_counts_sizes_and_keeps_an_oversized_newcomer() -> None:
    cache: BoundedCache[str, bytes] = BoundedCache(max_bytes=10, sizeof=len)
    cache.put("a", b"12345")
    cache.put("b", b"1234")
    assert cache.stats.bytes == 9
    cache.put("c", b"123")
    assert cache.keys() == ["b", "c"] and cache.stats.bytes == 7
    cache.put("big", b"x" * 50)  # alone over the budget: kept, everything older dropped
    assert cache.keys() == ["big"] and not cache.fits(b"x" * 50)
    assert cache.pop("big") == b"x" * 50 and cache.stats.bytes == 0 and len(cache) == 0


def test_replacing_a_key_updates_its_size_and_misses_are_counted() -> None:
    cache: BoundedCache[str, bytes] = BoundedCache(max_bytes=100, sizeof=len)
    cache.put("a", b"1" * 40)
    cache.put("a", b"1" * 10)
    assert cache.stats.bytes == 10 and len(cache) == 1
    assert cache.get("zzz", b"default") == b"default" and cache.stats.misses == 1


def test_a_bound_is_required() -> None:
    with pytest.raises(ValueError):
        BoundedCache()
    with pytest.raises(ValueError):
        BoundedCache(max_bytes=10)


def test_concurrent_puts_respect_the_bound() -> None:
    cache: BoundedCache[int, int] = BoundedCache(max_items=50)

    def fill(offset: int) -> None:
        for i in range(500):
            cache.put(offset + i, i)
            cache.get(offset + i // 2)

    threads = [threading.Thread(target=fill, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(cache) == 50 and cache.stats.entries == 50
