"""The starting segmentations in memory and on disk (byte-bounded, LRU) and what the caches weigh."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from decaf_backend.backend.segmentations import Segmentations
from decaf_backend.backend.session_cache import estimate_bytes
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


def test_segmentations_keep_masks_only_and_wake_waiters(tmp_path: Path) -> None:
    segs = Segmentations(SegmentationStore(tmp_path), max_bytes=10**6)
    key = (1, 7, "media", "Object", "the cat")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(segs.wait_for(key, 30)))
    waiter.start()
    kept = segs.keep(key, _seg(session=object()))
    waiter.join(30)
    assert kept.session is None and got and got[0] is not None and got[0].session is None
    assert segs.wait_for(("other",), 0) is None
    fresh = Segmentations(SegmentationStore(tmp_path), max_bytes=10**6)  # a restart: read back from disk
    np.testing.assert_array_equal(fresh.known(key).masks.to_array(), kept.masks.to_array())


def test_store_evicts_least_recently_used_files_beyond_its_byte_budget(tmp_path: Path) -> None:
    probe = SegmentationStore(tmp_path / "probe")
    probe.save(("p",), _seg())
    size = probe.bytes
    store = SegmentationStore(tmp_path / "store", max_bytes=int(2.5 * size))
    for key in "abc":
        store.save((key,), _seg())
    assert store.load(("a",)) is None and store.evictions == 1  # 3 files > 2.5: the oldest went
    assert store.load(("b",)) is not None  # b is now the most recent
    store.save(("d",), _seg())
    assert store.load(("c",)) is None and store.load(("b",)) is not None and store.load(("d",)) is not None
    assert store.bytes <= int(2.5 * size) and len(list((tmp_path / "store").rglob("*.seg"))) == 2
    # after a restart the order comes from the files' times: b, d were used last
    again = SegmentationStore(tmp_path / "store", max_bytes=int(2.5 * size))
    again.save(("e",), _seg())
    assert sum(again.load((k,)) is not None for k in "bde") == 2 and again.load(("e",)) is not None


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
