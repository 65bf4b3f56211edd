"""The starting segmentation of each (task, media, object): in memory (byte-bounded LRU), on disk (the store), and
an event per key so a correction waiting on a task's pre-annotation wakes as soon as its object is segmented.

A starting segmentation is what DecAF gave for the object; corrections never overwrite it (their masks depend on
the request, corrections.py), so every annotator's correction starts from the same masks, also after a restart.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import replace

from ..lru import BoundedCache
from ..types import VideoSegmentation
from .session_cache import masks_bytes
from .store import SegmentationStore

SegKey = tuple  # (project, task id, media key, label, prompt)


class Segmentations:
    def __init__(self, store: SegmentationStore, max_bytes: int) -> None:
        self.store = store
        # masks only: live SAM2 sessions are held (and counted) by the correction sessions' cache
        self.cache: BoundedCache[Hashable, VideoSegmentation] = BoundedCache(
            max_bytes=max_bytes, sizeof=masks_bytes
        )
        self._ready: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()

    def known(self, key: SegKey) -> VideoSegmentation | None:
        """The starting segmentation from memory, else from disk (no model work)."""
        seg = self.cache.get(key)
        if seg is None:
            seg = self.store.load(key)
            if seg is not None:
                self.cache.put(key, seg)
        return seg

    def keep(self, key: SegKey, seg: VideoSegmentation) -> VideoSegmentation:
        """Remember a new starting segmentation (without its live session, which the caller hands to the
        correction sessions' cache) and wake whoever waits for it."""
        bare = replace(seg, session=None)
        self.cache.put(key, bare)
        self.store.save(key, bare)
        with self._lock:
            event = self._ready.pop(key, None)
        if event is not None:
            event.set()
        return bare

    def wait_for(self, key: SegKey, timeout: float) -> VideoSegmentation | None:
        """The segmentation once it exists, waiting at most `timeout` seconds (an event, not polling)."""
        with self._lock:
            event = self._ready.setdefault(key, threading.Event())
        seg = self.known(key)
        if seg is None and event.wait(max(0.0, timeout)):
            seg = self.known(key)
        return seg

    def wake(self, project: object, task_id: object) -> None:
        """Wake the waiters of a task (its job ended without segmenting their object: they answer "not yet")."""
        with self._lock:
            keys = [k for k in self._ready if tuple(k[:2]) == (project, task_id)]
            events = [self._ready.pop(k) for k in keys]
        for event in events:
            event.set()
