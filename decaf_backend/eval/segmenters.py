"""Where an expression's masks come from: DecAF, the ground truth itself (oracle), or existing PNGs.

A `Segmenter` maps an `Expression` to masks; `to_payload` reduces any of its answers to a `SegmentPayload`,
the small picklable thing that crosses process (or Ray worker) boundaries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DecafError
from ..types import FrameMasks
from .datasets import Expression, RVOSDataset, load_dataset, safe_relpath

Segmenter = Callable[[Expression], Any]  # returns VideoSegmentation, FrameMasks, (T, H, W) array or mask list


@dataclass
class SegmentPayload:
    """A segmenter's answer reduced to what crosses process boundaries: compressed masks and a few facts."""

    masks: FrameMasks
    object_name: str = ""
    points: list[dict[str, Any]] = field(default_factory=list)
    score: float | None = None
    seconds: float = 0.0
    random_weights: bool = False


def to_payload(output: Any, seconds: float = 0.0) -> SegmentPayload:
    """Normalise a segmenter's answer: VideoSegmentation (its live SAM2 session is dropped), FrameMasks,
    a (T, H, W) array or a list of (H, W) masks."""
    if isinstance(getattr(output, "masks", None), FrameMasks):
        scores = getattr(output, "scores", None)
        score = scores.get("score") if isinstance(scores, dict) else None
        return SegmentPayload(
            masks=output.masks,
            object_name=str(getattr(output, "object_name", "") or ""),
            points=list(getattr(output, "points", None) or []),
            score=None if score is None else float(score),
            seconds=seconds,
            random_weights=bool(getattr(output, "random_weights", False)),
        )
    if isinstance(output, FrameMasks):
        return SegmentPayload(output, seconds=seconds)
    if isinstance(output, (np.ndarray, list, tuple)):
        arr = np.asarray(output)
        if arr.ndim != 3:
            raise DecafError(f"segmenter returned masks of shape {arr.shape}, expected (T, H, W)")
        return SegmentPayload(FrameMasks.from_array(arr), seconds=seconds)
    raise DecafError(f"segmenter returned {type(output).__name__}, not masks")


def run_segmenter(segmenter: Segmenter, expr: Expression) -> SegmentPayload:
    start = time.perf_counter()
    output = segmenter(expr)
    return to_payload(output, time.perf_counter() - start)


class OracleSegmenter:
    """Returns the ground truth itself: J, F and J&F come out as 100 (a check of the dataset and scoring)."""

    def __init__(self, dataset: RVOSDataset) -> None:
        if not dataset.has_gt:
            raise DecafError(
                f"--oracle needs ground truth, and {dataset.name} split {dataset.split!r} has none "
                f"(choose a split with ground truth: "
                f"{', '.join(s for s, gt in dataset.splits.items() if gt) or 'none'})"
            )
        self.dataset = dataset

    def __call__(self, expr: Expression) -> FrameMasks:
        return FrameMasks.from_array(np.stack([m > 0 for m in self.dataset.gt_masks(expr)]))


@dataclass
class OracleFactory:
    """Picklable recipe for a worker: the oracle over the dataset, re-opened there."""

    name: str
    root: str
    split: str

    def __call__(self) -> Segmenter:
        return OracleSegmenter(load_dataset(self.name, self.root, self.split))


class PngFolderSegmenter:
    """Existing predictions instead of a model: `<root>/<video>/<exp_id>/<frame>.png`, any value > 0 is
    foreground (the layout DecAF, VISA and the MeViS tools write). A missing PNG fails the expression, which
    then scores 0 — as in the official evaluators."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DecafError(f"--predictions {self.root} is not a folder")

    def __call__(self, expr: Expression) -> FrameMasks:
        folder = self.root / safe_relpath(expr.video) / safe_relpath(expr.exp_id)
        masks = None
        for i, name in enumerate(expr.frames):
            image = cv2.imread(str(folder / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise DecafError(f"prediction {folder / name}.png missing or unreadable")
            if masks is None:
                masks = FrameMasks(len(expr.frames), image.shape[0], image.shape[1])
            masks[i] = image > 0
        if masks is None:
            raise DecafError(f"{expr.key} lists no frames")
        return masks


class PipelineSegmenter:
    """DecAF on one expression: the whole listed video and the expression text."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def __call__(self, expr: Expression) -> Any:
        return self.pipeline.segment(expr.reader(), expr.text)


@dataclass
class PipelineFactory:
    """Picklable recipe that loads DecafPipeline inside each worker (after its GPU is chosen)."""

    mllm: str | None = None
    sam2: str | None = None
    device: str | None = None
    dtype: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Segmenter:
        from ..config import DecafConfig
        from ..pipeline import DecafPipeline

        config = DecafConfig.from_env(**self.config_overrides)
        pipeline = DecafPipeline.from_pretrained(self.mllm, self.sam2, self.device, self.dtype, config)
        return PipelineSegmenter(pipeline)
