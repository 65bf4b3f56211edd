"""Maps, fusion and coarse masks (spec §5–§7): every golden stage, plus properties."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from decaf_backend.config import DecafConfig
from decaf_backend.fusion import (
    FusionResult,
    align_video_time,
    align_video_to_frames,
    attention_map_from_rollout,
    coarse_masks,
    contrast,
    fuse_maps,
    gaussian_kernel,
    normalize_global,
    normalize_per_frame,
    resize_bilinear,
    rollout_to_map,
    smooth_maps,
)
from decaf_backend.points import candidate_points, stack_points
from tests.golden import GOLDEN_DIR

GOLDEN = GOLDEN_DIR
POST_CASES = sorted(p.stem for p in (GOLDEN / "postprocess").glob("post_case*.npz"))
E2E = GOLDEN / "e2e" / "e2e_tiny_qwen25vl.npz"
MAP_TOL = {"atol": 1e-5, "rtol": 0.0}  # README: smoothed / normalised / fused maps
MAX_PIXEL_SHARE = 1e-3  # README: ≤ 0.1 % of pixels may differ (by 1 grey level for the uint8 map)

needs_post = pytest.mark.skipif(not POST_CASES, reason=f"golden postprocess data not found under {GOLDEN}")
needs_e2e = pytest.mark.skipif(not E2E.is_file(), reason=f"golden e2e data not found at {E2E}")


def _load_post(case: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((GOLDEN / "postprocess" / f"{case}.json").read_text())
    with np.load(GOLDEN / "postprocess" / f"{case}.npz") as data:
        return meta, {k: data[k] for k in data.files}


def _post_maps(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    grids = {"video": d["video_grid_thw"], "frame": d["image_grid_thw"]}
    return {
        f"{tag}_{level}": attention_map_from_rollout(
            d[f"{tag}_{level}_rollout"], d[f"{tag}_{level}_visual_mask"], grids[level], level
        )
        for tag in ("obj", "bg")
        for level in ("video", "frame")
    }


def _fuse(maps: dict[str, np.ndarray], cfg: DecafConfig) -> FusionResult:
    return fuse_maps(maps["obj_video"], maps["bg_video"], maps["obj_frame"], maps["bg_frame"], cfg)


def _check_stages(result: FusionResult, d: dict[str, np.ndarray]) -> int:
    checked = 0
    for name, ours in result.as_dict().items():
        if name in d:
            assert ours.dtype == np.float32 and ours.shape == d[name].shape, name
            np.testing.assert_allclose(ours, d[name], **MAP_TOL, err_msg=name)
            checked += 1
    return checked


def _check_coarse(fused: np.ndarray, d: dict[str, np.ndarray]) -> None:
    size = d["coarse_masks"].shape[1:]
    grey, levels, masks = coarse_masks(fused, size)
    assert grey.dtype == np.uint8 and masks.dtype == np.uint8 and levels.dtype == np.float32
    grey_exact = True
    if "fused_upsampled_uint8" in d:
        diff = np.abs(grey.astype(int) - d["fused_upsampled_uint8"].astype(int))
        assert diff.max() <= 1 and np.mean(diff > 0) <= MAX_PIXEL_SHARE
        grey_exact = not diff.any()
    if "otsu_levels" in d:
        np.testing.assert_array_equal(levels, d["otsu_levels"])
    assert set(np.unique(masks)) <= {0, 255}
    if grey_exact:
        np.testing.assert_array_equal(masks, d["coarse_masks"])
    else:
        assert np.mean(masks != d["coarse_masks"]) <= MAX_PIXEL_SHARE


# --- golden -----------------------------------------------------------------------------------------


@needs_post
@pytest.mark.parametrize("case", POST_CASES)
def test_golden_kernels(case: str) -> None:
    meta, d = _load_post(case)
    kernels = [k for k in d if re.fullmatch(r"gaussian_kernel_\d+", k)]
    assert kernels
    for name in kernels:
        size = int(name.rsplit("_", 1)[1])
        np.testing.assert_allclose(gaussian_kernel(size, meta["sigma"]), d[name], **MAP_TOL)


@needs_post
@pytest.mark.parametrize("case", POST_CASES)
def test_golden_postprocess_every_stage(case: str) -> None:
    meta, d = _load_post(case)
    cfg = DecafConfig(
        video_kernel_size=meta["smooth_video"],
        frame_kernel_size=meta["smooth_frame"],
        gaussian_sigma=meta["sigma"],
    )
    maps = _post_maps(d)
    assert maps["obj_video"].shape == tuple(meta["video_merged_grid"])
    assert maps["obj_frame"].shape == tuple(meta["frame_merged_grid"])
    result = _fuse(maps, cfg)
    assert _check_stages(result, d) == len(FusionResult.__dataclass_fields__)
    if meta.get("const_zero_frame") is not None:  # the zero-range rule: a constant slice → zeros, no NaN
        assert not result.contrast_frame[meta["const_zero_frame"]].any()
        assert not result.norm_frame[meta["const_zero_frame"]].any()
    assert np.all(np.isfinite(result.fused)) and result.fused.max() == 1.0 and result.fused.min() == 0.0
    assert d["coarse_masks"].shape[1:] == tuple(meta["original_size"])
    _check_coarse(result.fused, d)


@needs_e2e
def test_golden_e2e_postprocess() -> None:
    """e2e: reference rollouts → maps → fused → coarse masks → points (point threshold = spec default)."""
    meta = json.loads(E2E.with_suffix(".json").read_text())
    with np.load(E2E) as data:
        d = {k: data[k] for k in data.files}
    maps = {
        f"{tag}_{level}": attention_map_from_rollout(
            d[f"{tag}_{level}_rollout"], d[f"{tag}_{level}_visual_mask"], d[f"{tag}_{level}_grid_thw"], level
        )
        for tag in ("obj", "bg")
        for level in ("video", "frame")
    }
    cfg = DecafConfig()
    result = _fuse(maps, cfg)
    assert _check_stages(result, d) == len(FusionResult.__dataclass_fields__)
    assert d["coarse_masks"].shape[1:] == tuple(meta["original_size"])
    _check_coarse(result.fused, d)
    points = candidate_points(result.fused, cfg.point_threshold)
    assert [0 if p is None else len(p) for p in points] == meta["points_per_frame"]
    xy, frames, values = stack_points(points)
    np.testing.assert_array_equal(xy, d["points_xy"])
    np.testing.assert_array_equal(frames, d["points_frame"])
    np.testing.assert_array_equal(values, d["points_value"])


# --- properties --------------------------------------------------------------------------------------


def test_gaussian_kernel_properties() -> None:
    for k in (1, 3, 5, 7):
        kern = gaussian_kernel(k, 1.0)
        assert kern.dtype == np.float32 and kern.shape == (k, k)
        assert abs(float(kern.sum()) - 1) < 1e-6
        np.testing.assert_array_equal(kern, kern.T)
        np.testing.assert_array_equal(kern, kern[::-1, ::-1])
        assert kern[k // 2, k // 2] == kern.max()
    np.testing.assert_allclose(gaussian_kernel(3)[0, 1] / gaussian_kernel(3)[1, 1], np.exp(-0.5), rtol=1e-6)
    with pytest.raises(ValueError):
        gaussian_kernel(4)


def test_smoothing_is_zero_padded_convolution() -> None:
    maps = np.zeros((2, 9, 11), np.float32)
    maps[0, 4, 5] = 1.0  # interior impulse → the kernel itself
    maps[1, 0, 0] = 1.0  # corner impulse → mass lost to the zero padding
    out = smooth_maps(maps, 5, 1.0)
    np.testing.assert_allclose(out[0, 2:7, 3:8], gaussian_kernel(5), atol=1e-7)
    assert abs(out[0].sum() - 1) < 1e-6
    assert out[1].sum() < 0.5
    np.testing.assert_allclose(out[1, :3, :3], gaussian_kernel(5)[2:, 2:], atol=1e-7)
    ones = smooth_maps(np.ones((1, 9, 9), np.float32), 3)
    assert ones[0, 4, 4] == pytest.approx(1.0) and ones[0, 0, 0] < ones[0, 0, 4] < 1.0


def test_contrast_and_normalisation_rules() -> None:
    obj = np.array([[[0.2, 1.9], [0.5, 0.1]]], np.float32)
    bg = np.array([[[0.3, 0.1], [0.1, 0.1]]], np.float32)
    np.testing.assert_allclose(contrast(obj, bg), [[[0.0, 1.0], [0.4, 0.0]]], atol=1e-7)
    x = np.stack([np.full((3, 4), 0.7, np.float32), np.arange(12, dtype=np.float32).reshape(3, 4) + 2])
    per = normalize_per_frame(x)
    assert not per[0].any()  # constant slice → zeros (divide by 1), not NaN
    assert per[1].min() == 0 and per[1].max() == 1
    glob = normalize_global(x)
    assert glob.min() == 0 and glob.max() == 1
    np.testing.assert_allclose(glob, (x - x.min()) / (x.max() - x.min()), atol=1e-7)
    assert not normalize_global(np.full((2, 3, 3), 5.0, np.float32)).any()


@pytest.mark.parametrize(("t_v", "frames"), [(4, 8), (4, 7), (3, 5), (6, 6)])
def test_temporal_alignment(t_v: int, frames: int) -> None:
    video = np.arange(t_v, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32)
    aligned = align_video_time(video, frames)
    assert aligned.shape == (frames, 2, 3)
    expected = np.arange(frames) if t_v == frames else np.arange(frames) // 2  # v0,v0,v1,v1,… drop last
    np.testing.assert_array_equal(aligned[:, 0, 0], expected)
    with pytest.raises(ValueError):
        align_video_time(video, 2 * t_v + 2)


def test_bilinear_resize_matches_interpolate_and_half_pixel_rule() -> None:
    x = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    up = resize_bilinear(x, (8, 10))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None], (8, 10), mode="bilinear", align_corners=False
    )
    np.testing.assert_allclose(up, ref[0].numpy(), atol=1e-7)
    # align_corners=False: output pixel 0 sits at input coordinate -0.25 → clamped to the edge value
    np.testing.assert_allclose(up[:, 0, 0], x[:, 0, 0], atol=1e-7)
    np.testing.assert_allclose(
        up[:, 1, 1],
        0.75 * 0.75 * x[:, 0, 0] + 0.75 * 0.25 * (x[:, 0, 1] + x[:, 1, 0]) + 0.0625 * x[:, 1, 1],
        atol=1e-6,
    )
    full = align_video_to_frames(x, 5, (8, 10))
    assert full.shape == (5, 8, 10)
    np.testing.assert_array_equal(full[4], up[2])


def test_fuse_maps_invariants() -> None:
    rng = np.random.default_rng(3)
    maps = [rng.random(s, dtype=np.float32) for s in [(3, 4, 5), (3, 4, 5), (5, 8, 10), (5, 8, 10)]]
    res = fuse_maps(*maps, DecafConfig())
    assert res.fused.shape == (5, 8, 10) and res.fused.dtype == np.float32
    assert res.fused.min() == 0.0 and res.fused.max() == 1.0
    expected = normalize_global((res.video_upsampled + res.norm_frame) / 2)
    np.testing.assert_array_equal(res.fused, expected)
    np.testing.assert_array_equal(res.smooth_obj_video, smooth_maps(maps[0], 3))
    np.testing.assert_array_equal(res.smooth_obj_frame, smooth_maps(maps[2], 7))
    with pytest.raises(ValueError):
        fuse_maps(maps[0], maps[0][:2], maps[2], maps[3])


def test_rollout_to_map_is_batch_major_raster_order() -> None:
    rows = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    mask = np.zeros((2, 10), bool)
    mask[:, 3:9] = True  # 6 visual tokens per prompt
    out = rollout_to_map(rows, mask, (2, 2, 3))
    np.testing.assert_array_equal(out[0].ravel(), rows[0, 3:9])
    np.testing.assert_array_equal(out[1].ravel(), rows[1, 3:9])
    frame = attention_map_from_rollout(rows, mask, np.array([[1, 4, 6], [1, 4, 6]]), "frame")
    np.testing.assert_array_equal(frame, out)
    video_mask = np.zeros((1, 10), bool)
    video_mask[0, 3:7] = True  # grid_thw (2, 2, 4) → merged (2, 1, 2): 4 tokens
    video = attention_map_from_rollout(rows[:1], video_mask, np.array([[2, 2, 4]]), "video")
    np.testing.assert_array_equal(video.ravel(), rows[0, 3:7])
    assert video.shape == (2, 1, 2)
    with pytest.raises(ValueError):
        rollout_to_map(rows, mask, (2, 2, 2))
    with pytest.raises(ValueError):
        attention_map_from_rollout(rows, mask, np.array([[1, 3, 6]]), "frame")


def test_coarse_masks_otsu_is_strictly_greater() -> None:
    fused = np.zeros((2, 4, 4), np.float32)
    fused[0, :2] = 1.0  # two-level map: the Otsu level is the low grey value, which stays 0
    fused[1] = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    grey, levels, masks = coarse_masks(fused, (8, 8))
    assert grey.shape == masks.shape == (2, 8, 8)
    for t in range(2):
        np.testing.assert_array_equal(masks[t], np.where(grey[t] > levels[t], 255, 0).astype(np.uint8))
    assert masks[0, 0].all() and not masks[0, -1].any()
    # ×255 then truncation: 0.999 → 254, not 255
    g, _, _ = coarse_masks(np.full((1, 2, 2), 0.999, np.float32), (2, 2))
    assert g.max() == 254
