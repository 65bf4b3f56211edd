"""Data types shared by the stages. Plain containers: no model or Label Studio code here."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class VideoInfo:
    """What the probe of a video says; sizes are the native frame size."""

    num_frames: int
    fps: float
    width: int
    height: int
    source: str = ""

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass
class AttentionResult:
    """The rollout of one prompt kind (object/background, video/frame level).

    rollout: (B, L) float32 last rows of the rolled-out attention (reference `attentions[0][0]`).
    visual_mask: (B, L) bool positions of the visual tokens.
    attention_map: (t, h, w) float32 map on the merged token grid (spec §5, before smoothing).
    answers: the generated answers (object prompts) or None (prefill-only prompts).
    """

    rollout: np.ndarray
    visual_mask: np.ndarray
    attention_map: np.ndarray
    input_ids: np.ndarray | None = None
    answers: list[str] | None = None
    grid_thw: np.ndarray | None = None


@dataclass(frozen=True)
class Click:
    """An annotator click in pixel coordinates of the native frame."""

    frame: int
    x: float
    y: float
    positive: bool = True


@dataclass(frozen=True)
class Box:
    """A box prompt in pixel coordinates (x0, y0) top-left, (x1, y1) bottom-right."""

    frame: int
    x0: float
    y0: float
    x1: float
    y1: float


class PromptsByKind:
    """Mixin for a class holding its prompts (clicks and boxes) in `prompts`: each kind on its own, in order."""

    prompts: list[Click | Box]

    @property
    def clicks(self) -> list[Click]:
        return [p for p in self.prompts if isinstance(p, Click)]

    @property
    def boxes(self) -> list[Box]:
        return [p for p in self.prompts if isinstance(p, Box)]


class FrameMasks:
    """Binary masks for every frame of a video, kept compressed (bit-packed + zlib).

    Long videos have too many frames to hold full-size boolean masks in memory; frames never
    written read back as empty.
    """

    def __init__(self, num_frames: int, height: int, width: int) -> None:
        self.num_frames, self.height, self.width = num_frames, height, width
        self._frames: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self.num_frames

    def _check(self, index: int) -> int:
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"frame {index} outside 0..{self.num_frames - 1}")
        return index % self.num_frames

    def __setitem__(self, index: int, mask: np.ndarray) -> None:
        index = self._check(index)
        mask = np.asarray(mask)
        if mask.shape != (self.height, self.width):
            raise ValueError(f"mask shape {mask.shape} != frame size {(self.height, self.width)}")
        self._frames[index] = zlib.compress(np.packbits(mask > 0).tobytes(), 1)

    def __getitem__(self, index: int) -> np.ndarray:
        index = self._check(index)
        packed = self._frames.get(index)
        if packed is None:
            return np.zeros((self.height, self.width), dtype=bool)
        bits = np.unpackbits(np.frombuffer(zlib.decompress(packed), dtype=np.uint8))
        return bits[: self.height * self.width].reshape(self.height, self.width).astype(bool)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.num_frames):
            yield self[i]

    @property
    def nbytes(self) -> int:
        """Bytes held by the compressed frames (what a cache budget should count)."""
        return sum(len(b) for b in self._frames.values())

    def union(self, index: int, mask: np.ndarray) -> None:
        self[index] = self[index] | (np.asarray(mask) > 0)

    def to_array(self) -> np.ndarray:
        """(N, H, W) bool; only for videos that fit in memory."""
        return np.stack(list(self)) if self.num_frames else np.zeros((0, self.height, self.width), bool)

    @classmethod
    def from_array(cls, masks: np.ndarray) -> FrameMasks:
        masks = np.asarray(masks)
        out = cls(masks.shape[0], masks.shape[1], masks.shape[2])
        for i, m in enumerate(masks):
            out[i] = m
        return out


@dataclass
class VideoSegmentation:
    """The result of DecAF for one (video, prompt): masks on every frame plus what led to them."""

    prompt: str
    object_name: str
    video: VideoInfo
    key_frame_indices: list[int]
    masks: FrameMasks
    coarse_masks: np.ndarray | None = None  # (T, H, W) uint8 0/255 on key frames (spec §7)
    points: list[dict[str, Any]] = field(default_factory=list)  # {"frame": video idx, "x", "y" (px), "value"}
    prompt_frames: list[int] = field(default_factory=list)  # video frames that got SAM2 mask prompts
    scores: dict[str, Any] = field(default_factory=dict)  # tracklet/final scores, overall score
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    random_weights: bool = False  # True when made with tiny random test models
    # per frame, in [0, 1]: SAM2's own object score and predicted IoU for this object's mask (confidence.py);
    # None when the predictor gives no such signals (fakes, masks read back from Label Studio)
    frame_confidence: list[float] | None = None
    session: Any = None  # a live correction session (see pipeline.CorrectionSession), or None

    @property
    def score(self) -> float:
        return float(self.scores.get("score", 0.0))
