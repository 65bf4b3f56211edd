"""Candidate point prompts from the fused attention map (spec §8)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FramePoints", "candidate_points", "stack_points"]


@dataclass
class FramePoints:
    """The candidate points of one key frame; each point becomes its own SAM2 object.

    points_xy: (N, 2) float32 normalised (x, y) cell centres; cells: (N, 2) int64 (row i, column j) on
    the fused grid; values: (N,) float32 fused values at the cells.
    """

    points_xy: np.ndarray
    cells: np.ndarray
    values: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        """(N,) int32, all positive clicks (DecAF never uses negative points)."""
        return np.ones(len(self.values), dtype=np.int32)

    def __len__(self) -> int:
        return len(self.values)


def candidate_points(fused: np.ndarray | torch.Tensor, threshold: float = 0.8) -> list[FramePoints | None]:
    """Cells with fused[t, i, j] >= threshold, per key frame in row-major order; None for empty frames.

    The comparison is done in float32 (as the reference's tensors are), so a float64 threshold cannot
    flip a borderline cell. Point (x, y) = ((j + 0.5) / w, (i + 0.5) / h).
    """
    maps = np.asarray(fused.detach().cpu() if isinstance(fused, torch.Tensor) else fused, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"fused map must be (T, h, w), got shape {maps.shape}")
    _, h, w = maps.shape
    out: list[FramePoints | None] = []
    for frame in maps:
        cells = np.argwhere(frame >= np.float32(threshold))  # row-major (i, j) order
        if len(cells) == 0:
            out.append(None)
            continue
        xy = np.stack([(cells[:, 1] + 0.5) / w, (cells[:, 0] + 0.5) / h], axis=1).astype(np.float32)
        out.append(FramePoints(xy, cells.astype(np.int64), frame[cells[:, 0], cells[:, 1]]))
    return out


def stack_points(points: list[FramePoints | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten per-frame points (frame, row, column order) → (xy (N,2) float32, frame (N,) int64, values (N,))."""
    present = [(t, p) for t, p in enumerate(points) if p is not None]
    if not present:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    xy = np.concatenate([p.points_xy for _, p in present])
    frames = np.concatenate([np.full(len(p), t, dtype=np.int64) for t, p in present])
    values = np.concatenate([p.values for _, p in present])
    return xy, frames, values
