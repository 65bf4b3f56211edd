"""Finished segmentations on disk (MODEL_DIR/segmentations), so corrections survive cache eviction and restarts.

One file per (task, media, object): a JSON header line, then each frame's mask bit-packed and zlib-compressed.
Only plain data is stored (no pickle); the SAM2 session is rebuilt from the masks on its prompt frames.
Bounded: a byte budget (DECAF_STORE_MB) with least-recently-used eviction; the LRU index is a BoundedCache of file
sizes rebuilt from the files' modification times at start, and every read or write refreshes a file's time.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..lru import BoundedCache
from ..types import FrameMasks, VideoInfo, VideoSegmentation

FORMAT = 1


def _is_jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class SegmentationStore:
    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._index: BoundedCache[Path, int] | None = None
        self._index_lock = threading.Lock()
        self.evictions = 0

    def _lru(self) -> BoundedCache[Path, int]:
        """The LRU of stored files, oldest first (built on first use from the files on disk)."""
        with self._index_lock:
            if self._index is None:
                index: BoundedCache[Path, int] = BoundedCache(
                    max_bytes=self.max_bytes if self.max_bytes is not None else 2**62,
                    sizeof=lambda size: size,
                    on_evict=self._evicted,
                )
                found = []
                for path in self.root.rglob("*.seg") if self.root.is_dir() else []:
                    try:
                        st = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append((st.st_mtime_ns, path, st.st_size))
                for _, path, size in sorted(found):
                    index.put(path, size)
                self._index = index
            return self._index

    def _evicted(self, path: Path, size: int) -> None:
        path.unlink(missing_ok=True)
        self.evictions += 1

    @property
    def bytes(self) -> int:
        return self._lru().stats.bytes

    def __len__(self) -> int:
        return len(self._lru())

    def _path(self, key: tuple) -> Path:
        digest = hashlib.sha1(json.dumps(key, default=str).encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.seg"

    def save(self, key: tuple, seg: VideoSegmentation) -> None:
        masks = seg.masks
        blobs = [zlib.compress(np.packbits(masks[i]).tobytes(), 1) for i in range(masks.num_frames)]
        header = {
            "format": FORMAT,
            "prompt": seg.prompt,
            "object_name": seg.object_name,
            "video": {k: getattr(seg.video, k) for k in ("num_frames", "fps", "width", "height", "source")},
            "key_frame_indices": list(seg.key_frame_indices),
            "prompt_frames": list(seg.prompt_frames),
            "scores": {k: v for k, v in seg.scores.items() if _is_jsonable(v)},
            "random_weights": seg.random_weights,
            "frame_confidence": seg.frame_confidence,
            "sizes": [len(b) for b in blobs],
        }
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(header).encode() + b"\n")
                for blob in blobs:
                    fh.write(blob)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
        finally:
            tmp.unlink(missing_ok=True)  # only still there when writing failed (disk full...)
        self._lru().put(path, path.stat().st_size)

    def load(self, key: tuple) -> VideoSegmentation | None:
        path = self._path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        lru = self._lru()
        if path in lru:
            lru.get(path)  # most recently used now; the file time keeps that order across restarts
            try:
                os.utime(path)
            except FileNotFoundError:
                return None
        try:
            line_end = raw.index(b"\n")
            header = json.loads(raw[:line_end])
            if header.get("format") != FORMAT:
                return None
            info = VideoInfo(**header["video"])
            masks = FrameMasks(info.num_frames, info.height, info.width)
            offset = line_end + 1
            bits = info.height * info.width
            for i, size in enumerate(header["sizes"]):
                packed = np.frombuffer(zlib.decompress(raw[offset : offset + size]), dtype=np.uint8)
                masks[i] = np.unpackbits(packed)[:bits].reshape(info.height, info.width)
                offset += size
        except (ValueError, KeyError, TypeError, zlib.error):
            return None  # a damaged file is the same as none: the caller rebuilds
        return VideoSegmentation(
            prompt=header["prompt"],
            object_name=header["object_name"],
            video=info,
            key_frame_indices=header["key_frame_indices"],
            masks=masks,
            prompt_frames=header["prompt_frames"],
            scores=header["scores"],
            random_weights=header["random_weights"],
            frame_confidence=header.get("frame_confidence"),
        )
