"""Tests of the SAM2 orchestration (decaf_backend/tracking.py) against the reference's golden data.

Every input and parameter comes from shared/golden (sam2/, postprocess/post_case1_T8 for the fused map and
points the sam2 runs were fed with, e2e/); the predictor is the README's fake (tests/fakes.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from decaf_backend.config import DecafConfig
from decaf_backend.tracking import (
    ac_scores,
    mask_iou_matrix,
    nms_with_tracklets,
    run_stage_b,
    segment_with_points,
    select_final_prompts,
)
from decaf_backend.types import FrameMasks
from tests.golden import GOLDEN_DIR

from .fakes import BlankFrames, FakeSam2Predictor

GOLDEN = GOLDEN_DIR
SAM2 = GOLDEN / "sam2"
needs_golden = pytest.mark.skipif(not SAM2.is_dir(), reason=f"golden data folder {GOLDEN} is absent")


@dataclass
class Points:
    """Stand-in for points.FramePoints: anything with points_xy, cells and values works."""

    points_xy: np.ndarray
    cells: np.ndarray
    values: np.ndarray


def golden_points(
    xy: np.ndarray, frame: np.ndarray, value: np.ndarray, fused: np.ndarray
) -> list[Points | None]:
    """Per-key-frame point sets from the golden flat arrays (frame index of each point)."""
    _, h, w = fused.shape
    out: list[Points | None] = []
    for t in range(fused.shape[0]):
        sel = frame == t
        if not sel.any():
            out.append(None)
            continue
        cells = np.stack([np.rint(xy[sel, 1] * h - 0.5), np.rint(xy[sel, 0] * w - 0.5)], 1).astype(np.int64)
        out.append(Points(xy[sel].astype(np.float32), cells, value[sel].astype(np.float32)))
    return out


def thr_tag(value: float) -> str:
    return f"thr{round(value * 100):03d}"


# --------------------------------------------------------------------------------------------- IoU / NMS


@needs_golden
def test_mask_iou_matrix_matches_reference_pairwise_iou() -> None:
    data = np.load(SAM2 / "sam2_nms_cases.npz")
    cases = sorted({k.split("_")[0] for k in data.files})
    assert cases
    for case in cases:
        iou = mask_iou_matrix(data[f"{case}_masks"])
        np.testing.assert_array_equal(iou, data[f"{case}_pairwise_iou"], err_msg=case)


def test_mask_iou_matrix_counts_and_empty_union() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((5, 13, 17)) > 0.6
    b = rng.random((3, 13, 17)) > 0.3
    a[4] = False
    b[2] = False
    iou = mask_iou_matrix(a, b)
    assert iou.shape == (5, 3)
    for i in range(5):
        for j in range(3):
            union = np.logical_or(a[i], b[j]).sum()
            expected = np.float32(np.logical_and(a[i], b[j]).sum()) / np.float32(union) if union else 0.0
            assert iou[i, j] == np.float32(expected)
    assert iou[4, 2] == 0.0
    assert mask_iou_matrix(np.zeros((0, 4, 4), bool), b[:, :4, :4]).shape == (0, 3)


@needs_golden
def test_nms_with_tracklets_matches_reference() -> None:
    data = np.load(SAM2 / "sam2_nms_cases.npz")
    thr = DecafConfig().nms_iou_threshold  # README: the cases ran get_valid_obj_ids with its 0.7 default
    for case in sorted({k.split("_")[0] for k in data.files}):
        prev = data[f"{case}_prev_masks"] if f"{case}_prev_masks" in data.files else None
        prev_scores = data[f"{case}_prev_scores"] if prev is not None else None
        keep, delete = nms_with_tracklets(
            data[f"{case}_masks"], data[f"{case}_scores"], thr, prev, prev_scores
        )
        assert keep == data[f"{case}_keep"].tolist(), case
        assert delete == data[f"{case}_delete_prev"].tolist(), case


def _rect(x0: int, x1: int, shape: tuple[int, int] = (10, 20)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[:, x0:x1] = True
    return m


def test_nms_reference_quirks() -> None:
    # candidate 0 (best) overlaps candidate 1 and old tracklets 0 (weaker) and 1 (stronger):
    # it deletes old 0, is then dropped by old 1, yet still suppresses candidate 1 and the deletion stays.
    cands = np.stack([_rect(0, 10), _rect(0, 9), _rect(12, 20)])
    prev = np.stack([_rect(0, 10), _rect(0, 10), _rect(0, 10)])
    keep, delete = nms_with_tracklets(
        cands, np.float32([1.5, 1.4, 1.0]), 0.7, prev, np.float32([1.0, 1.6, 1.0])
    )
    assert keep == [2]
    assert delete == [0]
    # the same old tracklet can be marked twice: A and B overlap each other by 0.5 but the old one by 0.75
    old = _rect(0, 20)[None]
    keep, delete = nms_with_tracklets(
        np.stack([_rect(0, 15), _rect(5, 20)]), np.float32([1.2, 1.1]), 0.7, old, np.float32([0.5])
    )
    assert keep == [0, 1] and delete == [0, 0]
    # nothing overlaps: all kept by descending score, no deletions
    keep, delete = nms_with_tracklets(
        np.stack([_rect(0, 3), _rect(5, 8)]), np.float32([0.2, 0.9]), 0.7, None, None
    )
    assert keep == [1, 0] and delete == []


# --------------------------------------------------------------------------------------------- AC + selection


@needs_golden
def test_ac_scores_and_selection_match_reference() -> None:
    data = np.load(SAM2 / "sam2_ac_score_case.npz")
    meta = json.loads((SAM2 / "sam2_ac_score_case.json").read_text())
    masks = data["tracklet_masks"]
    ac = ac_scores(data["fused"], (m for m in masks))
    assert ac.dtype == np.float32
    np.testing.assert_array_equal(ac, data["ac_scores"])
    assert meta["selection_by_threshold"]
    for tag, expected in meta["selection_by_threshold"].items():
        final, chosen = select_final_prompts(data["tracklet_scores"], ac, int(tag) / 100)
        np.testing.assert_array_equal(final, data["final_scores"])
        assert chosen == expected["chosen"], tag
        frames = [int(data["key_frame_indices"][data["tracklet_frame_idx"][k]]) for k in chosen]
        assert frames == expected["frame_indices"], tag


def test_ac_scores_rescale_only_positive() -> None:
    fused = np.zeros((2, 4, 4), np.float32)
    fused[:, :2, :2] = 1.0
    inside = np.zeros((2, 8, 8), np.uint8)
    inside[:, :4, :4] = 1
    half = np.zeros((2, 8, 8), np.uint8)
    half[:, :2, :4] = 1
    outside = np.zeros((2, 8, 8), np.uint8)
    outside[:, 4:, 4:] = 1
    ac = ac_scores(fused, [inside, half, outside])
    assert ac[0] == pytest.approx(1.0, abs=1e-6)  # the best positive becomes ~1
    assert ac[1] == pytest.approx(0.5, abs=1e-6)
    assert ac[2] == pytest.approx(-1.0, abs=1e-6)  # background cells cost -max; not rescaled
    assert ac_scores(fused, []).shape == (0,)


def test_select_final_prompts_strict_and_first_max_fallback() -> None:
    final, chosen = select_final_prompts(np.float32([1.2, 1.5, 1.5]), np.float32([0.0, 0.3, 0.3]), 0.5)
    assert chosen == [1, 2]
    np.testing.assert_array_equal(
        final, (np.float32([1.2, 1.5, 1.5]) + np.float32([0.0, 0.3, 0.3])) / np.float32(3)
    )
    _, chosen = select_final_prompts(np.float32([0.9, 1.2, 1.2]), np.float32([0.0, 0.0, 0.0]), 0.45)
    assert chosen == [1]  # nothing passes: the first of the tied maxima
    assert select_final_prompts(np.zeros(0, np.float32), np.zeros(0, np.float32), 0.8)[1] == []


# --------------------------------------------------------------------------------------------- orchestration


@needs_golden
@pytest.mark.parametrize("name", ["sam2_orchestration_thr080", "sam2_orchestration_thr070"])
def test_orchestration_matches_reference(name: str) -> None:
    data = np.load(SAM2 / f"{name}.npz")
    meta = json.loads((SAM2 / f"{name}.json").read_text())
    post = np.load(GOLDEN / "postprocess" / "post_case1_T8.npz")  # README: the map these runs were fed with
    fused = post["fused"]
    tag = thr_tag(meta["point_threshold"])
    points = golden_points(
        post[f"points_xy_{tag}"], post[f"points_frame_{tag}"], post[f"points_value_{tag}"], fused
    )
    height, width = meta["original_size"]
    key_idx = data["key_frame_indices"]
    fake_cfg = meta["fake_predictor"]
    predictor = FakeSam2Predictor(fake_cfg["radius"], fake_cfg["shift_px_per_frame"], fake_cfg["logit"])
    cfg = DecafConfig(
        point_threshold=meta["point_threshold"], final_score_threshold=meta["final_score_threshold"]
    )

    res = segment_with_points(
        predictor,
        BlankFrames(len(key_idx), height, width),
        BlankFrames(meta["num_video_frames"], height, width),
        key_idx,
        fused,
        points,
        cfg,
    )

    assert predictor.calls == meta["call_log"]
    ours = [(e["keep"], e["delete_previous"], e["num_previous"], e["scores"]) for e in res.nms_log]
    ref = [(e["keep"], e["delete_previous"], e["num_previous"], e["scores"]) for e in meta["nms_log"]]
    assert [o[:3] for o in ours] == [r[:3] for r in ref]
    for o, r in zip(ours, ref):  # the json rounds scores to 6 decimals: half a unit there + float32 error
        np.testing.assert_allclose(o[3], r[3], rtol=float(np.finfo(np.float32).eps), atol=0.5e-6)
    np.testing.assert_array_equal(res.tracklet_masks, data["tracklet_masks"].astype(bool))
    np.testing.assert_array_equal(res.tracklet_scores, data["tracklet_scores"])
    np.testing.assert_array_equal(res.tracklet_frame_idx, data["tracklet_frame_idx"])
    np.testing.assert_array_equal(res.ac_scores, data["ac_scores"])
    np.testing.assert_array_equal(res.final_scores, data["final_scores"])
    np.testing.assert_array_equal(res.selected_video_frame_indices, data["selected_video_frame_indices"])
    np.testing.assert_array_equal(res.selected_masks, data["selected_masks"].astype(bool))
    assert isinstance(res.final_masks, FrameMasks) and len(res.final_masks) == meta["num_video_frames"]
    np.testing.assert_array_equal(res.final_masks.to_array(), data["final_masks"] == 255)
    assert set(np.unique(data["final_masks"])) <= {0, 255}


def _e2e() -> tuple[np.lib.npyio.NpzFile, dict]:
    e2e = GOLDEN / "e2e"
    return np.load(e2e / "e2e_tiny_qwen25vl.npz"), json.loads((e2e / "e2e_tiny_qwen25vl.json").read_text())


def _run_e2e(points: list) -> tuple[FakeSam2Predictor, object, np.lib.npyio.NpzFile, dict]:
    data, meta = _e2e()
    height, width = meta["original_size"]
    predictor = FakeSam2Predictor(meta["fake_predictor_radius"])
    key_idx = data["key_frame_indices"]
    res = segment_with_points(
        predictor,
        BlankFrames(len(key_idx), height, width),
        BlankFrames(meta["num_frames"], height, width),  # key frames = the whole video here
        key_idx,
        data["fused"],
        points,
        DecafConfig(),  # the demo's defaults (point 0.8, final 0.8, NMS 0.7)
    )
    return predictor, res, data, meta


@needs_golden
def test_e2e_final_masks_from_fused_and_points() -> None:
    data, _ = _e2e()
    points = golden_points(data["points_xy"], data["points_frame"], data["points_value"], data["fused"])
    predictor, res, data, meta = _run_e2e(points)
    assert predictor.calls == meta["fake_predictor_log"]
    np.testing.assert_array_equal(res.final_masks.to_array(), data["final_masks"] == 255)


@needs_golden
def test_e2e_with_points_module() -> None:
    import decaf_backend.points as points_mod

    data, _ = _e2e()
    points = points_mod.candidate_points(data["fused"], DecafConfig().point_threshold)
    predictor, res, data, meta = _run_e2e(points)
    assert predictor.calls == meta["fake_predictor_log"]
    np.testing.assert_array_equal(res.final_masks.to_array(), data["final_masks"] == 255)


# --------------------------------------------------------------------------------------------- edge cases


def test_no_points_gives_empty_masks_without_predictor_calls() -> None:
    predictor = FakeSam2Predictor(5.0)
    res = segment_with_points(
        predictor,
        BlankFrames(3, 12, 16),
        BlankFrames(7, 12, 16),
        [0, 3, 6],
        np.zeros((3, 4, 4), np.float32),
        [None, None, None],
    )
    assert predictor.calls == []
    assert len(res.final_masks) == 7 and not res.final_masks.to_array().any()
    assert res.tracklet_scores.shape == (0,) and res.selected_masks.shape == (0, 12, 16)
    assert res.tracklet_masks.shape[0] == 0


def test_stage_b_groups_by_frame_in_first_appearance_order() -> None:
    predictor = FakeSam2Predictor(3.0, shift=1)
    a, b, c = _rect(0, 2), _rect(5, 7), _rect(10, 12)
    out = run_stage_b(predictor, BlankFrames(6, 10, 20), [4, 0, 4], [a, b, c])
    names = [(call[0], *call[1:3]) for call in predictor.calls if call[0] in ("add_mask", "propagate")]
    assert names == [
        ("add_mask", 4, 100),
        ("add_mask", 4, 101),
        ("propagate", 4, 2),
        ("propagate", 3, 4),
        ("add_mask", 0, 100),
        ("propagate", 0, 6),
    ]
    masks = out.to_array()
    # frame 4 holds a ∪ c as given plus b moved by 4 px; frame 0 holds b plus a, c moved back 4 px
    np.testing.assert_array_equal(masks[4], a | c | np.roll(b, 4, axis=1))
    np.testing.assert_array_equal(masks[0], b | np.roll(a | c, -4, axis=1))


def test_fake_predictor_follows_readme_rules() -> None:
    predictor = FakeSam2Predictor(2.0)
    state = predictor.init_state(BlankFrames(4, 6, 8))
    xy = np.float32([[0.5, 0.5]])
    _, ids, logits, iou = predictor.add_new_points_or_box(state, 1, 100, points=xy, labels=np.int32([1]))
    assert ids == [100] and tuple(logits.shape) == (1, 1, 6, 8)
    assert iou.item() == np.float32(0.55 + 0.4 * 0.5 * 0.5)
    disc = logits[0, 0].numpy() > 0
    assert disc.sum() == 12 and disc[3, 4] and not disc[0, 0]
    frames = [f for f, _, _ in predictor.propagate_in_video(state, 1, 10, False)]
    assert frames == [1, 2, 3]
    assert [f for f, _, _ in predictor.propagate_in_video(state, 2, 1, True)] == [2, 1]
    seen = {f: lg[0, 0].numpy() > 0 for f, _, lg in predictor.propagate_in_video(state, 0, 4, False)}
    np.testing.assert_array_equal(seen[3], np.roll(disc, 6, axis=1))
    np.testing.assert_array_equal(seen[0], np.roll(disc, -3, axis=1))
