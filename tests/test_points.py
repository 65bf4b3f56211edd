"""Candidate point prompts (spec §8): golden points at every stored threshold, plus properties."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from decaf_backend.points import FramePoints, candidate_points, stack_points
from tests.golden import GOLDEN_DIR

GOLDEN = GOLDEN_DIR / "postprocess"
POST_FILES = sorted(GOLDEN.glob("post_case*.npz"))


def _thresholds(files: list[Path]) -> list[tuple[Path, str]]:
    """(file, tag) for every `points_xy_thrXXX` array; XXX is the threshold in hundredths (README)."""
    out = []
    for f in files:
        with np.load(f) as data:
            out += [(f, m.group(1)) for k in data.files if (m := re.fullmatch(r"points_xy_thr(\d+)", k))]
    return out


CASES = _thresholds(POST_FILES)


@pytest.mark.skipif(not CASES, reason=f"golden postprocess data not found under {GOLDEN}")
@pytest.mark.parametrize(("path", "tag"), CASES, ids=[f"{p.stem}-thr{t}" for p, t in CASES])
def test_golden_points(path: Path, tag: str) -> None:
    threshold = int(tag) / 100
    with np.load(path) as d:
        fused = d["fused"]
        points = candidate_points(fused, threshold)
        assert len(points) == fused.shape[0]
        counts = [0 if p is None else len(p) for p in points]
        np.testing.assert_array_equal(counts, d[f"points_count_per_frame_thr{tag}"])
        xy, frames, values = stack_points(points)
        assert xy.dtype == np.float32 and values.dtype == np.float32
        np.testing.assert_array_equal(xy, d[f"points_xy_thr{tag}"])
        np.testing.assert_array_equal(frames, d[f"points_frame_thr{tag}"])
        np.testing.assert_array_equal(values, d[f"points_value_thr{tag}"])
        labels = np.concatenate([p.labels for p in points if p is not None])
        np.testing.assert_array_equal(labels, d[f"points_label_thr{tag}"])
        assert labels.dtype == d[f"points_label_thr{tag}"].dtype


def test_row_major_order_cells_and_centres() -> None:
    fused = np.zeros((3, 4, 5), np.float32)
    fused[0, 2, 1] = 0.9
    fused[0, 0, 4] = 0.8
    fused[0, 2, 0] = 1.0
    fused[2, 3, 4] = 0.85
    points = candidate_points(fused, 0.8)
    assert points[1] is None
    first = points[0]
    assert isinstance(first, FramePoints) and len(first) == 3
    np.testing.assert_array_equal(first.cells, [[0, 4], [2, 0], [2, 1]])
    np.testing.assert_array_equal(
        first.points_xy, np.array([[4.5 / 5, 0.5 / 4], [0.5 / 5, 2.5 / 4], [1.5 / 5, 2.5 / 4]], np.float32)
    )
    np.testing.assert_array_equal(first.values, np.array([0.8, 1.0, 0.9], np.float32))
    np.testing.assert_array_equal(first.labels, [1, 1, 1])
    np.testing.assert_array_equal(points[2].points_xy, np.array([[0.9, 0.875]], np.float32))
    xy, frames, values = stack_points(points)
    np.testing.assert_array_equal(frames, [0, 0, 0, 2])
    assert xy.shape == (4, 2) and values[-1] == np.float32(0.85)


def test_threshold_compared_in_float32() -> None:
    """float32(0.7) < 0.7 in float64; the reference compares float32 tensors, so the cell is kept."""
    fused = np.full((1, 2, 2), np.float32(0.7), np.float32)
    assert np.float64(fused[0, 0, 0]) < 0.7
    assert len(candidate_points(fused, 0.7)[0]) == 4
    assert candidate_points(np.nextafter(fused, np.float32(0)), 0.7) == [None]
    as_tensor = candidate_points(torch.from_numpy(fused), 0.7)[0]
    assert len(as_tensor) == 4


def test_empty_and_invalid() -> None:
    assert candidate_points(np.zeros((2, 3, 3), np.float32)) == [None, None]
    xy, frames, values = stack_points([None, None])
    assert xy.shape == (0, 2) and frames.shape == (0,) and values.shape == (0,)
    with pytest.raises(ValueError):
        candidate_points(np.zeros((3, 3), np.float32))
