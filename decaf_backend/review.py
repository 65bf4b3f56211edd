"""Frames to check first: the few frames of one object's masks most likely to be wrong, most doubtful first.

A frame is doubtful when SAM2 was unsure there (low per-frame confidence, see confidence.py), when the mask
jumps against its neighbours (its area or its position changes a lot from one frame to the next, which a real
object rarely does), or when the object appears or vanishes (tracking often loses or swaps objects there).
Each signal becomes a risk in [0, 1]; a frame's risk is the largest, and the list keeps the riskiest frames
a few frames apart, so that it points at different places of the video.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

TRANSITION_RISK = 0.6  # appearing/vanishing: often right (occlusion, exits), worth a look all the same
AREA_REASON = 0.3  # relative area change that is named as a reason
MOVE_REASON = 0.25  # centroid shift, in object sizes, that is named as a reason
CONFIDENCE_REASON = 0.8  # confidence below this is named as a reason
MIN_RISK = 0.1  # frames below this risk are never listed


@dataclass(frozen=True)
class MaskGeometry:
    """Area (pixels) and centroid (x, y; NaN when empty) of an object's mask on every frame."""

    areas: np.ndarray  # (N,) int64
    centroids: np.ndarray  # (N, 2) float64

    @classmethod
    def of(cls, masks: Iterable[np.ndarray]) -> MaskGeometry:
        areas, centroids = [], []
        for mask in masks:
            ys, xs = np.nonzero(mask)
            areas.append(len(xs))
            centroids.append((xs.mean(), ys.mean()) if len(xs) else (np.nan, np.nan))
        return cls(np.asarray(areas, np.int64), np.asarray(centroids, np.float64).reshape(-1, 2))


@dataclass(frozen=True)
class FrameToCheck:
    frame: int  # 0-based video frame
    risk: float  # in [0, 1]: how likely this frame's mask is wrong, by the signals below
    reasons: tuple[str, ...]  # short words for the annotator, strongest first
    confidence: float | None = None


def frames_to_check(
    geometry: MaskGeometry,
    confidence: Sequence[float] | None = None,
    limit: int = 5,
    min_gap: int | None = None,
) -> list[FrameToCheck]:
    """Up to `limit` frames, riskiest first, at least `min_gap` frames apart (default: 2% of the video, ≥ 1).

    Frames whose risk stays below MIN_RISK, or whose signals all stay below the thresholds that name a reason,
    are not listed, so a clean, confident track gives an empty list.
    """
    n = len(geometry.areas)
    if n == 0 or limit <= 0:
        return []
    if confidence is not None and len(confidence) != n:
        raise ValueError(f"{len(confidence)} confidences for {n} frames")
    gap = max(1, n // 50) if min_gap is None else max(0, min_gap)
    risks: list[list[tuple[float, str]]] = [[] for _ in range(n)]
    if confidence is not None:
        for f, c in enumerate(confidence):
            label = f"confidence {c:.2f}" if c < CONFIDENCE_REASON else ""
            risks[f].append((1.0 - float(c), label))
    _add_jumps(geometry, risks)
    _add_transitions(geometry.areas, risks)

    scored = []
    for f, parts in enumerate(risks):
        risk = max((r for r, _ in parts), default=0.0)
        reasons = tuple(label for _, label in sorted(parts, key=lambda p: -p[0]) if label)
        if risk >= MIN_RISK and reasons:  # a frame is listed for a reason the annotator can read
            conf = None if confidence is None else float(confidence[f])
            scored.append(FrameToCheck(f, min(1.0, risk), reasons, conf))
    scored.sort(key=lambda c: (-c.risk, c.frame))
    chosen: list[FrameToCheck] = []
    for candidate in scored:
        if all(abs(candidate.frame - c.frame) > gap for c in chosen):
            chosen.append(candidate)
            if len(chosen) == limit:
                break
    return chosen


def _add_jumps(geometry: MaskGeometry, risks: list[list[tuple[float, str]]]) -> None:
    """How far a frame's area and centroid are from what its visible neighbours predict (their mean, or a
    straight line through the two on one side): steady motion and growth cost nothing, a one-frame glitch a
    lot, and a lasting jump shows on the frames on both sides of it."""
    areas, centres = geometry.areas.astype(np.float64), geometry.centroids
    visible = areas > 0
    for f in np.flatnonzero(visible):
        expected = _expected(f, visible, lambda g: np.array([areas[g], *centres[g]]))
        if expected is None:
            continue
        size = max(areas[f], expected[0], 1.0)
        change = min(1.0, abs(areas[f] - expected[0]) / size)
        risks[f].append((change, f"area jump {100 * change:.0f}%" if change >= AREA_REASON else ""))
        move = float(np.hypot(*(centres[f] - expected[1:]))) / np.sqrt(size)  # in object sizes
        label = f"moves {move:.1f}× its size" if move >= MOVE_REASON else ""
        risks[f].append((1.0 - float(np.exp(-move)), label))  # 1 size: 0.63, 3 sizes: 0.95


def _expected(f: int, visible: np.ndarray, value: Callable[[int], np.ndarray]) -> np.ndarray | None:
    n = len(visible)

    def seen(g: int) -> bool:
        return 0 <= g < n and bool(visible[g])

    if seen(f - 1) and seen(f + 1):
        return (value(f - 1) + value(f + 1)) / 2
    for step in (-1, 1):
        if seen(f + step) and seen(f + 2 * step):
            return 2 * value(f + step) - value(f + 2 * step)
    for step in (-1, 1):
        if seen(f + step):
            return value(f + step)
    return None


def _add_transitions(areas: np.ndarray, risks: list[list[tuple[float, str]]]) -> None:
    visible = areas > 0
    for f in range(1, len(areas)):
        if visible[f] and not visible[f - 1]:
            risks[f].append((TRANSITION_RISK, "appears"))
        elif visible[f - 1] and not visible[f]:
            risks[f].append((TRANSITION_RISK, "vanishes"))
