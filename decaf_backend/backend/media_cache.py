"""The on-disk media cache (MODEL_DIR/media) under a byte budget (DECAF_MEDIA_CACHE_MB), least recently used first.

Entries are downloaded videos (`videos/<digest>/<file name>`) and frame folders (`frames/<key>/`). The index is the project's
BoundedCache keyed by entry name with the entry's bytes as its size; a restart rebuilds it from the files
(modification time = last use). An entry whose reader is still alive (a live SAM2 session may reopen the file
later) is not deleted when the budget drops it: it is deleted by the first sweep after the reader is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any

from ..lru import BoundedCache

log = logging.getLogger(__name__)
PARTIAL_SUFFIXES = (".part", ".tmp")  # files and folders being written; a crash can leave them behind


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size if path.exists() else 0


class MediaDiskCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._users: dict[str, weakref.WeakSet[Any]] = {}  # entry -> readers still using its files
        self._doomed: set[str] = set()  # dropped by the budget while in use
        self._index: BoundedCache[str, int] = BoundedCache(
            max_bytes=max_bytes, sizeof=lambda size: size, on_evict=self._dropped
        )
        self._scan()

    def path(self, name: str) -> Path:
        return self.root / name

    def lookup(self, name: str) -> Path | None:
        """The entry's path when it is complete on disk (and marks it used), else None."""
        path = self.path(name)
        if not path.exists():
            self._index.pop(name)
            return None
        with self._lock:
            self._doomed.discard(name)
        if name in self._index:
            self._index.get(name)
        else:
            self._index.put(name, _size(path))
        _touch(path)
        return path

    def add(self, name: str) -> Path:
        """Count a newly written entry; entries beyond the budget go, least recently used first."""
        path = self.path(name)
        with self._lock:
            self._doomed.discard(name)
        self._index.put(name, _size(path))
        self.sweep()
        return path

    def hold(self, name: str, reader: Any) -> None:
        """`reader` reads the entry's files: keep them while it is alive."""
        with self._lock:
            self._users.setdefault(name, weakref.WeakSet()).add(reader)

    def sweep(self) -> None:
        """Delete dropped entries whose readers are gone."""
        with self._lock:
            free = [n for n in self._doomed if not self._users.get(n)]
            self._doomed.difference_update(free)
            for name in free:
                self._users.pop(name, None)
        for name in free:
            self._delete(name)

    @property
    def bytes(self) -> int:
        return self._index.stats.bytes

    @property
    def evictions(self) -> int:
        return self._index.stats.evictions

    def _dropped(self, name: str, size: int) -> None:
        with self._lock:
            if self._users.get(name):
                self._doomed.add(name)
                return
            self._users.pop(name, None)
        self._delete(name)

    def _delete(self, name: str) -> None:
        if name in self._index:  # used again since it was dropped
            return
        path = self.path(name)
        log.info("media cache over its budget: removing %s", name)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def _scan(self) -> None:
        found: list[tuple[float, str, int]] = []
        if not self.root.is_dir():
            return
        for path in [
            *self.root.iterdir(),
            *_children(self.root / "videos"),
            *_children(self.root / "frames"),
        ]:
            name = path.relative_to(self.root).as_posix()
            if path.name.endswith(PARTIAL_SUFFIXES) or path.name.startswith("."):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                continue
            if name in ("videos", "frames"):
                continue
            if path.is_dir():
                for partial in [p for p in path.iterdir() if p.name.endswith(PARTIAL_SUFFIXES)]:
                    partial.unlink(missing_ok=True)
                complete = (
                    (path / ".complete").exists() if name.startswith("frames/") else any(path.iterdir())
                )
                if not complete:
                    shutil.rmtree(
                        path, ignore_errors=True
                    )  # an unfinished frame folder, an empty video folder
                    continue
            found.append((path.stat().st_mtime, name, _size(path)))
        for _, name, size in sorted(found):
            self._index.put(name, size)


def _children(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


def _touch(path: Path) -> None:
    try:
        os.utime(path)  # the order survives a restart
    except OSError:
        pass
