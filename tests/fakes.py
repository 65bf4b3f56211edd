"""Deterministic stand-ins for heavy models, shared by tests.

`FakeSam2Predictor` is the fake SAM2 video predictor of shared/golden/README.md ("Fake predictor"): the
golden SAM2 orchestration data was made with it, so its behaviour on single-click, mask and propagation
calls must not change. Calls the golden runs never made (several clicks, pixel coordinates, negative
clicks, boxes, clicks on an existing object) are deterministic extensions for pipeline/correction tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class BlankFrames:
    """A lazy sequence of `n` black HxWx3 uint8 frames (only `len()` and `[i]`), like a video reader."""

    def __init__(self, n: int, height: int, width: int) -> None:
        self.n, self.height, self.width = n, height, width

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        if not -self.n <= index < self.n:
            raise IndexError(index)
        return np.zeros((self.height, self.width, 3), dtype=np.uint8)


@dataclass
class FakeState:
    num_frames: int
    height: int
    width: int
    objects: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # obj_id -> (cond frame, mask)


class FakeSam2Predictor:
    """Objects are masks that move `shift` px per frame to the right (wrapping), seen from their cond frame.

    A click at normalised (x, y) gives the disc (c + .5 − x·W)² + (r + .5 − y·H)² ≤ radius² (float64) and the
    predicted IoU float32(0.55 + 0.4·x·(1 − y)). Logits are ±`logit` float32 torch tensors. Every call is
    appended to `calls` in the golden `call_log` format (points rounded to 6 decimals).
    """

    def __init__(self, radius: float, shift: int = 3, logit: float = 8.0) -> None:
        self.radius, self.shift, self.logit = float(radius), int(shift), float(logit)
        self.calls: list[list[Any]] = []

    # -- protocol -------------------------------------------------------------------------------------
    def init_state(self, frames: Sequence[np.ndarray]) -> FakeState:
        height, width = np.asarray(frames[0]).shape[:2]
        self.calls.append(["init_state", len(frames)])
        return FakeState(len(frames), int(height), int(width))

    def reset_state(self, state: FakeState) -> None:
        self.calls.append(["reset_state"])
        state.objects.clear()

    def add_new_points_or_box(
        self,
        state: FakeState,
        frame_idx: int,
        obj_id: int,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        normalize_coords: bool = False,
    ) -> tuple[int, list[int], torch.Tensor, torch.Tensor]:
        pts = (
            np.zeros((0, 2), np.float32) if points is None else _np(points).astype(np.float32).reshape(-1, 2)
        )
        lbl = np.ones(len(pts), np.int32) if labels is None else _np(labels).astype(np.int32).reshape(-1)
        if normalize_coords:  # pixel coordinates → normalised, as SAM2 does with the video size
            pts = (pts / np.array([state.width, state.height], np.float32)).astype(np.float32)
        entry: list[Any] = ["add_point", int(frame_idx), int(obj_id)]
        for (x, y), label in zip(pts, lbl):
            entry += [round(float(x), 6), round(float(y), 6), int(label)]
        if box is not None:
            entry += ["box", *[round(float(v), 6) for v in _np(box).reshape(-1)]]
        self.calls.append(entry)

        if obj_id in state.objects:  # a click on a known object edits its mask as seen on this frame
            mask = self._seen(state, obj_id, frame_idx)
        else:
            mask = np.zeros((state.height, state.width), dtype=bool)
        if box is not None:
            mask |= self._box(state, _np(box).reshape(-1), normalize_coords)
        for (x, y), label in zip(pts, lbl):
            disc = self._disc(state, x, y)
            mask = mask | disc if label == 1 else mask & ~disc
        state.objects[obj_id] = (int(frame_idx), mask)

        x, y = (pts[0] if len(pts) else self._box_centre(state, box, normalize_coords)).astype(np.float32)
        iou = torch.tensor([np.float32(0.55 + 0.4 * float(x) * (1.0 - float(y)))], dtype=torch.float32)
        return int(frame_idx), list(state.objects), self._logits(state, frame_idx), iou

    def add_new_mask(
        self, state: FakeState, frame_idx: int, obj_id: int, mask: Any
    ) -> tuple[int, list[int], torch.Tensor]:
        binary = _np(mask) > 0.5
        self.calls.append(["add_mask", int(frame_idx), int(obj_id), int(binary.sum())])
        state.objects[obj_id] = (int(frame_idx), binary.reshape(state.height, state.width))
        return int(frame_idx), list(state.objects), self._logits(state, frame_idx)

    def propagate_in_video(
        self,
        state: FakeState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        conds = [c for c, _ in state.objects.values()]
        if start_frame_idx is None:
            start_frame_idx = (max(conds) if reverse else min(conds)) if conds else 0
        if max_frame_num_to_track is None:
            max_frame_num_to_track = state.num_frames
        if reverse:
            order = list(range(start_frame_idx, max(start_frame_idx - max_frame_num_to_track, 0) - 1, -1))
        else:
            last = min(start_frame_idx + max_frame_num_to_track, state.num_frames - 1)
            order = list(range(start_frame_idx, last + 1))
        self.calls.append(
            ["propagate", int(start_frame_idx), int(max_frame_num_to_track), bool(reverse), order]
        )
        for f in order:
            yield f, list(state.objects), self._logits(state, f)

    # -- helpers --------------------------------------------------------------------------------------
    def _seen(self, state: FakeState, obj_id: int, frame: int) -> np.ndarray:
        cond, mask = state.objects[obj_id]
        return np.roll(mask, self.shift * (frame - cond), axis=1)

    def _logits(self, state: FakeState, frame: int) -> torch.Tensor:
        masks = [self._seen(state, o, frame) for o in state.objects]
        stacked = np.stack(masks) if masks else np.zeros((0, state.height, state.width), bool)
        values = np.where(stacked, np.float32(self.logit), np.float32(-self.logit)).astype(np.float32)
        return torch.from_numpy(values[:, None])

    def _disc(self, state: FakeState, x: np.float32, y: np.float32) -> np.ndarray:
        rows = np.arange(state.height, dtype=np.float64)[:, None]
        cols = np.arange(state.width, dtype=np.float64)[None, :]
        cx, cy = float(x) * state.width, float(y) * state.height
        return (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= self.radius**2

    def _box(self, state: FakeState, box: np.ndarray, normalize_coords: bool) -> np.ndarray:
        x0, y0, x1, y1 = (float(v) for v in box)
        if not normalize_coords:  # normalised → pixels
            x0, x1, y0, y1 = x0 * state.width, x1 * state.width, y0 * state.height, y1 * state.height
        rows = np.arange(state.height)[:, None] + 0.5
        cols = np.arange(state.width)[None, :] + 0.5
        return (cols >= x0) & (cols <= x1) & (rows >= y0) & (rows <= y1)

    def _box_centre(self, state: FakeState, box: Any, normalize_coords: bool) -> np.ndarray:
        if box is None:
            return np.array([0.5, 0.5], np.float32)
        x0, y0, x1, y1 = (float(v) for v in _np(box).reshape(-1))
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        return centre / np.array([state.width, state.height]) if normalize_coords else centre


def _np(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
