"""Per-frame confidence from SAM2's signals, the video's summary score, and the frames to check first."""

from __future__ import annotations

import math

import numpy as np
import pytest

from decaf_backend.confidence import combine, frame_confidence, summary_score
from decaf_backend.review import MIN_RISK, TRANSITION_RISK, FrameToCheck, MaskGeometry, frames_to_check

H, W = 40, 60


def _square(x: int, y: int, side: int) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y : y + side, x : x + side] = True
    return mask


def _steady(n: int = 12) -> list[np.ndarray]:
    """A 10-pixel square drifting 1 px per frame: nothing suspicious by geometry."""
    return [_square(5 + f, 10, 10) for f in range(n)]


def test_frame_confidence_follows_object_score_and_iou() -> None:
    assert frame_confidence(10.0, 0.9, True) == pytest.approx(0.9, abs=1e-3)
    assert frame_confidence(0.0, 0.9, True) == pytest.approx(0.45)  # unsure whether it is there at all
    assert frame_confidence(10.0, 0.3, True) < frame_confidence(10.0, 0.8, True)
    assert frame_confidence(-10.0, 0.2, False) == pytest.approx(1.0, abs=1e-4)  # confidently gone
    assert frame_confidence(2.0, 0.9, False) == pytest.approx(1 - 1 / (1 + math.exp(-2.0)))
    assert frame_confidence(-1024.0, 0.5, False) == 1.0  # SAM2's "no object" logit, no overflow
    assert frame_confidence(5.0, float("nan"), True) == pytest.approx(0.5 / (1 + math.exp(-5.0)))
    for logit in (-30.0, -1.0, 0.0, 1.0, 30.0):
        for iou in (-0.2, 0.0, 0.5, 1.0, 1.3):  # a predicted IoU is not bounded without sigmoid
            for shown in (True, False):
                assert 0.0 <= frame_confidence(logit, iou, shown) <= 1.0


def test_combine_and_summary() -> None:
    assert combine([0.9, 0.4, 0.7]) == 0.4 and combine([]) is None
    values = [0.95] * 18 + [0.2, 0.3]
    assert summary_score(values) == pytest.approx(0.3)  # 10th percentile: the bad stretch shows
    assert summary_score([0.95] * 99 + [0.1]) == pytest.approx(0.95)  # one odd frame in 100 does not
    assert summary_score([]) is None and summary_score(None) is None
    assert summary_score([0.2, 0.9]) < summary_score([0.8, 0.9])


def test_lowest_confidence_frames_come_first_and_apart() -> None:
    conf = [0.95] * 12
    conf[3], conf[4], conf[9] = 0.2, 0.3, 0.5
    checks = frames_to_check(MaskGeometry.of(_steady()), conf, limit=3, min_gap=1)
    assert [c.frame for c in checks] == [3, 9]  # 4 is next to 3; the other frames are confident
    assert checks[0].reasons == ("confidence 0.20",) and checks[0].confidence == pytest.approx(0.2)
    assert checks[0].risk == pytest.approx(0.8) and checks[1].risk == pytest.approx(0.5)
    no_gap = frames_to_check(MaskGeometry.of(_steady()), conf, limit=3, min_gap=0)
    assert [c.frame for c in no_gap] == [3, 4, 9]
    assert frames_to_check(MaskGeometry.of(_steady()), [0.95] * 12) == []  # nothing to check


def test_area_and_position_jumps_and_transitions_are_named() -> None:
    masks = _steady()
    masks[5] = _square(6, 10, 4)  # shrinks to 16% of its area for one frame
    masks[8] = _square(40, 25, 10)  # jumps across the frame for one frame
    masks[10] = np.zeros((H, W), bool)  # vanishes, and appears again on 11
    checks = {c.frame: c for c in frames_to_check(MaskGeometry.of(masks), None, limit=10, min_gap=0)}
    assert "area jump 84%" in checks[5].reasons
    assert any(r.startswith("moves") for r in checks[8].reasons)
    assert checks[10].reasons == ("vanishes",) and checks[10].risk == pytest.approx(TRANSITION_RISK)
    assert checks[11].reasons[-1] == "appears"
    # the glitch itself, not its neighbours
    assert checks[5].risk > checks[4].risk and checks[8].risk > checks[7].risk
    assert set(checks) <= {4, 5, 6, 7, 8, 9, 10, 11}
    ordered = frames_to_check(MaskGeometry.of(masks), None, limit=10, min_gap=0)
    assert [c.risk for c in ordered] == sorted((c.risk for c in ordered), reverse=True)
    assert all(c.risk >= MIN_RISK for c in ordered)


def test_frames_to_check_combines_confidence_with_geometry() -> None:
    masks = _steady()
    masks[7] = _square(8, 10, 5)
    conf = [0.9] * 12
    conf[2] = 0.35
    checks = frames_to_check(MaskGeometry.of(masks), conf, limit=2)
    assert [c.frame for c in checks] == [7, 2]
    assert isinstance(checks[0], FrameToCheck) and checks[0].reasons[0].startswith("area jump")
    with pytest.raises(ValueError, match="3 confidences for 12 frames"):
        frames_to_check(MaskGeometry.of(masks), [0.5] * 3)
    assert frames_to_check(MaskGeometry.of([]), None) == []
    empty = [np.zeros((H, W), bool)] * 4
    assert frames_to_check(MaskGeometry.of(empty), None) == []  # never seen: no jump, no transition
