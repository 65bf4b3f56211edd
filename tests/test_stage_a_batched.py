"""Stage A with a key frame's candidates added in one batched SAM2 call and tracked together, against the
reference's object-by-object calls, on the tiny random SAM2 (spec §9.1, §14.4).

Masks, kept candidates and deletions must be identical. The predicted IoUs come from a batched decoder
whose matrix products (MKL) round differently from batch-1 products, so a score may differ in its last
bit (measured: at most one float32 ulp, 6e-8 on values in [1, 2)); the test allows two ulps.
"""

from __future__ import annotations

import numpy as np
import pytest

from decaf_backend.errors import PromptError
from decaf_backend.points import FramePoints
from decaf_backend.sam2.loading import load_sam2_predictor
from decaf_backend.sam2.tiny import build_tiny_sam2
from decaf_backend.tracking import run_stage_a
from tests.conftest import moving_disc_frames

NUM_KEY_FRAMES, HEIGHT, WIDTH = 6, 60, 84
SCORE_ULPS = 2


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    return load_sam2_predictor(build_tiny_sam2(tmp_path_factory.mktemp("sam2") / "sam2"), device="cpu")


def candidates(seed: int) -> list[FramePoints | None]:
    """Candidate points on three key frames (several per frame, some on the disc), none on the others."""
    rng = np.random.default_rng(seed)
    points: list[FramePoints | None] = [None] * NUM_KEY_FRAMES
    for t, n in ((0, 5), (2, 1), (4, 7)):
        xy = rng.random((n, 2)).astype(np.float32)
        xy[0] = ((10 + 12 * t) / WIDTH, 0.5)  # on the disc: overlapping tracklets exercise NMS
        values = rng.uniform(0.8, 1.0, n).astype(np.float32)
        points[t] = FramePoints(xy, np.zeros((n, 2), np.int64), values)
    return points


def test_batched_stage_a_matches_one_by_one(predictor) -> None:
    key_frames = list(moving_disc_frames(NUM_KEY_FRAMES, HEIGHT, WIDTH))
    points = candidates(0)
    batched = run_stage_a(predictor, key_frames, points, batch_objects=True)
    one_by_one = run_stage_a(predictor, key_frames, points, batch_objects=False)

    assert len(batched.tracklets) == len(one_by_one.tracklets) > 1
    for a, b in zip(batched.tracklets, one_by_one.tracklets):
        assert a.frame == b.frame
        np.testing.assert_array_equal(a.packed, b.packed)
        assert abs(a.score - b.score) <= SCORE_ULPS * np.spacing(np.float32(b.score))
    assert len(batched.nms_log) == len(one_by_one.nms_log) == 3
    for a, b in zip(batched.nms_log, one_by_one.nms_log):
        assert (a["frame"], a["keep"], a["delete_previous"]) == (b["frame"], b["keep"], b["delete_previous"])
        assert a["num_previous"] == b["num_previous"]
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=SCORE_ULPS * 2.0**-23)


def test_batched_calls_are_used_and_state_stays_per_object(predictor, monkeypatch) -> None:
    """One batched add per prompted key frame, no per-object click; sam2's per-object state is filled in."""
    key_frames = list(moving_disc_frames(NUM_KEY_FRAMES, HEIGHT, WIDTH))
    points = candidates(1)
    calls = {"batch": 0, "single": 0}
    add_batch, add_single = predictor.add_point_objects, predictor.add_new_points_or_box
    monkeypatch.setattr(
        predictor,
        "add_point_objects",
        lambda *a, **k: calls.__setitem__("batch", calls["batch"] + 1) or add_batch(*a, **k),
    )
    monkeypatch.setattr(
        predictor,
        "add_new_points_or_box",
        lambda *a, **k: calls.__setitem__("single", calls["single"] + 1) or add_single(*a, **k),
    )
    run_stage_a(predictor, key_frames, points)
    assert calls == {"batch": 3, "single": 0}

    state = predictor.init_state(key_frames)
    xy = points[4].points_xy
    _, obj_ids, logits, iou = predictor.add_point_objects(state, 4, [100 + k for k in range(len(xy))], xy)
    assert obj_ids == [100 + k for k in range(len(xy))] and logits.shape == (len(xy), 1, HEIGHT, WIDTH)
    assert iou.shape == (len(xy),) and bool(((iou > -1) & (iou < 2)).all())
    assert predictor.conditioning_frames(state) == [4]
    for idx in range(len(xy)):
        assert list(state["temp_output_dict_per_obj"][idx]["cond_frame_outputs"]) == [4]
    with pytest.raises(PromptError, match="already exist"):
        predictor.add_point_objects(state, 4, [100], xy[:1])
