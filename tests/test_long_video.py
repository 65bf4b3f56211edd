"""Long videos: stage B's host memory does not grow with the frame count (frames streamed from the file,
per-frame SAM2 memories dropped once SAM2 can no longer read them; spec §9.4, §14.1 item 7).

Memory is measured, not timed: after every propagated frame the bytes of all tensors the SAM2 state holds
(its outputs, cached features and prepared frames) are summed. benchmarks/bench_long_video.py reports the
process's peak RSS for 300 / 1000 / 3000 frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from decaf_backend.overlay import write_video
from decaf_backend.sam2.frames import Sam2Frames
from decaf_backend.sam2.loading import load_sam2_predictor
from decaf_backend.sam2.tiny import build_tiny_sam2
from decaf_backend.tracking import run_stage_b
from decaf_backend.video import open_video
from tests.conftest import moving_disc_frames

HEIGHT, WIDTH = 32, 48
# SAM2 reads the last `num_maskmem` memories and `max_obj_ptrs_in_encoder` object pointers; stage B keeps
# the frames within that reach of the prompt frame plus a sliding window of it. A reach of 5 frames (instead
# of the tiny model's 17) lets short videos show the steady state: the window is full from frame 25 on.
OBJECT_POINTERS = 4
SHORT, LONG = 30, 75


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    predictor = load_sam2_predictor(build_tiny_sam2(tmp_path_factory.mktemp("sam2") / "sam2"), device="cpu")
    predictor.model.max_obj_ptrs_in_encoder = OBJECT_POINTERS
    return predictor


def held_bytes(value: Any, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable from a SAM2 state."""
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()
    if isinstance(value, Sam2Frames):
        return sum(held_bytes(v, seen) for v in value._cache.values())
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen) for v in value)
    return 0


def peak_state_bytes(predictor, path) -> tuple[int, int]:
    """(largest state size seen during stage B, frames with a mask) for a prompt on the middle frame."""
    peak = 0
    propagate = predictor.propagate_in_video

    def measured(state, *args, **kwargs):
        nonlocal peak
        for step in propagate(state, *args, **kwargs):
            peak = max(peak, held_bytes(state, set()))
            yield step

    reader = open_video(path)
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[10:22, 16:30] = True
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(predictor, "propagate_in_video", measured)
            masks = run_stage_b(predictor, reader, [len(reader) // 2], [mask])
    finally:
        reader.close()
    return peak, sum(1 for m in masks if m.any())


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    return {
        n: write_video(folder / f"disc_{n}.mp4", moving_disc_frames(n, HEIGHT, WIDTH)) for n in (SHORT, LONG)
    }


def test_stage_b_memory_does_not_grow_with_frames(predictor, videos) -> None:
    short, _ = peak_state_bytes(predictor, videos[SHORT])
    long, covered = peak_state_bytes(predictor, videos[LONG])
    assert covered > LONG // 2  # the object was really tracked over the long video
    # the same peak for 2.5× the frames (one more frame's outputs, > 16 KiB, would show)
    assert long <= short + 4096, (short, long)


def test_without_forgetting_the_state_grows(predictor, videos, monkeypatch) -> None:
    """The measurement can fail: with sam2's own behaviour (every frame's memory kept) it grows."""
    monkeypatch.setattr(predictor, "forget_tracking_history", lambda state: None, raising=False)
    short, _ = peak_state_bytes(predictor, videos[SHORT])
    long, _ = peak_state_bytes(predictor, videos[LONG])
    per_frame = (long - short) / (LONG - SHORT)
    assert per_frame > 16 * 1024, (short, long)  # tiny SAM2: mask memory + logits of every frame
