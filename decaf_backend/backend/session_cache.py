"""Live segmentations (masks + SAM2 correction session) per task and object, LRU-bounded by a byte budget.

An evicted entry is not lost: every segmentation is also written to the SegmentationStore on disk, and the model
rebuilds a correction session from it (or from the task's stored prediction) when the next click comes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from ..types import VideoSegmentation


def estimate_bytes(seg: VideoSegmentation, session_bytes_per_frame: int) -> int:
    """Compressed masks plus an estimate of the SAM2 state (memory features per tracked frame) when live."""
    masks = seg.masks
    session = masks.num_frames * session_bytes_per_frame if seg.session is not None else 0
    return masks.nbytes + session


@dataclass
class CacheStats:
    entries: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class SessionCache:
    def __init__(self, max_bytes: int, sizeof: Callable[[VideoSegmentation], int]) -> None:
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[VideoSegmentation, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def get(self, key: Hashable) -> VideoSegmentation | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: Hashable, seg: VideoSegmentation) -> None:
        size = self._sizeof(seg)
        if size > self.max_bytes and seg.session is not None:
            seg = replace(
                seg, session=None
            )  # alone over budget: keep the masks, rebuild the session on demand
            size = self._sizeof(seg)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.stats.bytes -= old[1]
            self._items[key] = (seg, size)
            self.stats.bytes += size
            while self.stats.bytes > self.max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self.stats.bytes -= dropped
                self.stats.evictions += 1
            self.stats.entries = len(self._items)

    def pop(self, key: Hashable) -> VideoSegmentation | None:
        with self._lock:
            entry = self._items.pop(key, None)
            if entry is None:
                return None
            self.stats.bytes -= entry[1]
            self.stats.entries = len(self._items)
            return entry[0]

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items
