"""The byte-bounded LRU of live segmentations and the disk store that outlives it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from decaf_backend.backend.session_cache import SessionCache, estimate_bytes
from decaf_backend.backend.store import SegmentationStore
from decaf_backend.types import FrameMasks, VideoInfo, VideoSegmentation


def _seg(n: int = 4, h: int = 16, w: int = 24, session: object = None, seed: int = 0) -> VideoSegmentation:
    rng = np.random.default_rng(seed)
    masks = FrameMasks.from_array(rng.random((n, h, w)) > 0.5)
    return VideoSegmentation(
        prompt="the cat",
        object_name="cat",
        video=VideoInfo(n, 10.0, w, h, "clip.mp4"),
        key_frame_indices=[0, n - 1],
        masks=masks,
        prompt_frames=[1],
        scores={"score": 0.75, "final_scores": [0.75], "not_json": object()},
        session=session,
    )


def test_estimate_counts_the_live_session_per_frame() -> None:
    bare, live = _seg(), _seg(session=object())
    assert estimate_bytes(live, 1000) - estimate_bytes(bare, 1000) == 4 * 1000
    assert estimate_bytes(bare, 1000) == bare.masks.nbytes > 0  # the compressed bytes actually held


def test_lru_evicts_least_recently_used_within_the_byte_budget() -> None:
    cache = SessionCache(max_bytes=2500, sizeof=lambda seg: 1000)
    for key in "abc":
        cache.put(key, _seg())
    assert "a" not in cache and "b" in cache and "c" in cache  # 3000 > 2500: the oldest went
    assert cache.get("b") is not None  # b is now the most recent
    cache.put("d", _seg())
    assert "c" not in cache and {k for k in "bd" if k in cache} == {"b", "d"}
    assert (cache.stats.evictions, cache.stats.entries, cache.stats.bytes) == (2, 2, 2000)
    assert cache.get("a") is None and cache.stats.misses == 1
    cache.put("b", _seg())  # replacing does not double count
    assert cache.stats.bytes == 2000
    assert cache.pop("b") is not None and cache.stats.bytes == 1000


def test_an_entry_over_budget_keeps_its_masks_but_drops_its_session() -> None:
    cache = SessionCache(max_bytes=500, sizeof=lambda seg: 100 + (1000 if seg.session is not None else 0))
    cache.put("big", _seg(session=object()))
    kept = cache.get("big")
    assert kept is not None and kept.session is None and cache.stats.bytes == 100


def test_store_round_trips_masks_and_metadata_without_the_session(tmp_path: Path) -> None:
    store = SegmentationStore(tmp_path)
    seg = _seg(n=5, h=13, w=7, session=object())  # odd sizes: bit packing must not shift pixels
    key = (1, 42, "media", "Object", "the cat")
    assert store.load(key) is None
    store.save(key, seg)
    back = store.load(key)
    assert back is not None and back.session is None
    np.testing.assert_array_equal(back.masks.to_array(), seg.masks.to_array())
    assert (back.prompt, back.object_name, back.video, back.prompt_frames) == (
        seg.prompt,
        seg.object_name,
        seg.video,
        [1],
    )
    assert back.scores == {"score": 0.75, "final_scores": [0.75]} and back.key_frame_indices == [0, 4]
    assert store.load((1, 42, "media", "Object", "another prompt")) is None


def test_damaged_store_files_read_as_missing(tmp_path: Path) -> None:
    store = SegmentationStore(tmp_path)
    key = ("k",)
    store.save(key, _seg())
    path = next(tmp_path.rglob("*.seg"))
    path.write_bytes(path.read_bytes()[:-5])
    assert store.load(key) is None
