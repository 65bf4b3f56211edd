"""One small bounded LRU cache for the whole project (decoded frames, vision encodings, readers, sessions).

Bounded by entry count, by total size (a `sizeof` per value), or both; thread-safe. `on_evict` is called outside
the lock for every value dropped by the bound (not for `pop`/`clear`), so a caller can release what a value holds
(a file handle, a GPU tensor) without blocking readers.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

__all__ = ["BoundedCache", "CacheStats"]


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class BoundedCache(Generic[K, V]):
    def __init__(
        self,
        max_items: int | None = None,
        max_bytes: int | None = None,
        sizeof: Callable[[V], int] | None = None,
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        if max_items is None and max_bytes is None:
            raise ValueError("a bounded cache needs max_items, max_bytes or both")
        if max_bytes is not None and sizeof is None:
            raise ValueError("max_bytes needs a sizeof function")
        self.max_items = None if max_items is None else max(1, int(max_items))
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._on_evict = on_evict
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.stats.misses += 1
                return default
            self._items.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: K, value: V) -> V:
        """Insert (or replace) `key`, then evict the least recently used entries beyond the bounds.

        The newest entry is never evicted by its own insertion, even when it alone exceeds `max_bytes`: the
        caller decides whether to shrink it first (see `fits`)."""
        size = self._sizeof(value) if self._sizeof is not None else 0
        evicted: list[tuple[K, V]] = []
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.stats.bytes -= old[1]
            self._items[key] = (value, size)
            self.stats.bytes += size
            while len(self._items) > 1 and self._over_bound():
                dropped_key, (dropped, dropped_size) = self._items.popitem(last=False)
                self.stats.bytes -= dropped_size
                self.stats.evictions += 1
                evicted.append((dropped_key, dropped))
            self.stats.entries = len(self._items)
        if self._on_evict is not None:
            for dropped_key, dropped in evicted:
                self._on_evict(dropped_key, dropped)
        return value

    def fits(self, value: V) -> bool:
        """Whether `value` alone stays within `max_bytes`."""
        return self.max_bytes is None or self._sizeof is None or self._sizeof(value) <= self.max_bytes

    def pop(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            entry = self._items.pop(key, None)
            if entry is None:
                return default
            self.stats.bytes -= entry[1]
            self.stats.entries = len(self._items)
            return entry[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.stats.bytes = 0
            self.stats.entries = 0

    def keys(self) -> list[K]:
        """A snapshot, least recently used first."""
        with self._lock:
            return list(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def _over_bound(self) -> bool:
        if self.max_items is not None and len(self._items) > self.max_items:
            return True
        return self.max_bytes is not None and self.stats.bytes > self.max_bytes
