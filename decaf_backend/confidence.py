"""Per-frame confidence from SAM2's own signals, and the one number that sums a video up.

SAM2 computes two numbers for every object on every frame it tracks: an *object score* logit (is the object
on this frame at all? SAM2 blanks the mask when it is below 0) and a *predicted IoU* (how good the decoder
thinks its mask is). The confidence of a frame is the model's own probability that what the frame shows is
right:

- mask shown:  p · IoU   (p = sigmoid(object score): the object is there, and the mask fits it)
- mask empty:  1 − p     (the object is really absent)

so a frame where SAM2 hesitates about presence (p ≈ 0.5) or doubts its mask (low IoU) scores low, and a
confident "gone" (occlusion, out of view) scores high. Several SAM2 objects that make one mask (DecAF's
selected tracklets) give the lowest of their confidences: the union is only as right as its weakest part.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

# Frames below this are the ones the summary looks at: a low percentile, not the minimum, so that one odd
# frame in a long video does not make the whole video look doubtful, while a bad stretch of a few frames does.
SUMMARY_PERCENTILE = 10.0


def frame_confidence(object_score_logit: float, predicted_iou: float, mask_shown: bool) -> float:
    """One SAM2 object's confidence in [0, 1] on one frame (see the module doc). A NaN IoU counts as 0.5."""
    logit = float(object_score_logit)
    present = 1.0 / (1.0 + math.exp(-logit)) if logit > -60 else 0.0
    if not mask_shown:
        return _unit(1.0 - present)
    iou = float(predicted_iou)
    iou = 0.5 if math.isnan(iou) else iou
    return _unit(present * iou)


def combine(confidences: Iterable[float]) -> float | None:
    """Confidence of a mask made of several SAM2 objects: the lowest; None when there is none."""
    values = [float(c) for c in confidences]
    return min(values) if values else None


def summary_score(confidences: Sequence[float] | None) -> float | None:
    """The video's score: the 10th percentile of its per-frame confidences (None when unknown).

    Label Studio sorts and filters tasks by the prediction score, so a low value here puts the videos with
    doubtful stretches first.
    """
    if confidences is None or len(confidences) == 0:
        return None
    values = np.asarray(confidences, dtype=np.float64)
    return _unit(float(np.percentile(values, SUMMARY_PERCENTILE, method="lower")))


def _unit(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


class ConfidenceRecorder:
    """Per-frame confidence of one mask while SAM2 propagates it, read from the predictor's optional
    `frame_signals(state, frame) -> {obj_id: (object_score_logit, predicted_iou)}` right after each frame.

    Every SAM2 object that makes up the mask counts, and a frame seen several times (several prompt groups)
    keeps its lowest value. A predictor without `frame_signals` (a fake) gives no confidence at all.
    """

    def __init__(self, predictor: object, num_frames: int) -> None:
        self._signals = getattr(predictor, "frame_signals", None)
        self._values = np.full(num_frames, np.nan)

    def record(self, state: object, frame: int, obj_ids: Sequence[int], binary: np.ndarray) -> None:
        """After SAM2 yielded `frame`: obj_ids and their (n_obj, H, W) bool masks on it."""
        if self._signals is None:
            return
        signals = self._signals(state, frame)
        value = combine(
            frame_confidence(*signals[obj], bool(binary[row].any()))
            for row, obj in enumerate(obj_ids)
            if obj in signals
        )
        if value is not None:
            old = self._values[frame]
            self._values[frame] = value if np.isnan(old) else min(old, value)

    def result(self) -> list[float] | None:
        """The confidences of all frames; None without signals. A frame SAM2 never decoded gets 0: nothing
        vouches for its (empty) mask."""
        if self._signals is None or np.isnan(self._values).all():
            return None
        return [0.0 if np.isnan(v) else float(v) for v in self._values]
