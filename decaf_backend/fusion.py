"""Rollout rows → attention maps → decomposed attention fusion → coarse masks (spec §5–§7).

Pure functions on (t, h, w) maps. Inputs may be numpy arrays or torch tensors; outputs are numpy
(float32 maps, uint8 masks). Convolution and resizing run in torch float32 on the CPU so they follow
the reference's `F.conv2d` / `F.interpolate` arithmetic exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from decaf_backend.config import DecafConfig

__all__ = [
    "FusionResult",
    "align_video_time",
    "align_video_to_frames",
    "attention_map_from_rollout",
    "coarse_masks",
    "contrast",
    "fuse_maps",
    "gaussian_kernel",
    "normalize_global",
    "normalize_per_frame",
    "resize_bilinear",
    "rollout_to_map",
    "smooth_maps",
]

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(x: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(
        np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.float32
    )


def _as_maps(x: ArrayLike, name: str = "maps") -> torch.Tensor:
    t = _as_tensor(x)
    if t.dim() != 3:
        raise ValueError(f"{name} must be (t, h, w), got shape {tuple(t.shape)}")
    return t


# --- §5: rollout rows → maps ------------------------------------------------------------------


def rollout_to_map(rollout: ArrayLike, visual_mask: ArrayLike, shape: tuple[int, int, int]) -> np.ndarray:
    """`rollout[visual_mask]` (batch-major: item 0's visual tokens first) reshaped to `shape` (t, h, w)."""
    rows = np.asarray(
        rollout.detach().cpu() if isinstance(rollout, torch.Tensor) else rollout, dtype=np.float32
    )
    mask = np.asarray(
        visual_mask.detach().cpu() if isinstance(visual_mask, torch.Tensor) else visual_mask, bool
    )
    if rows.shape != mask.shape:
        raise ValueError(f"rollout {rows.shape} and visual mask {mask.shape} differ in shape")
    values = rows[mask]
    t, h, w = (int(s) for s in shape)
    if values.size != t * h * w:
        raise ValueError(f"{values.size} visual tokens cannot form a ({t}, {h}, {w}) map")
    return values.reshape(t, h, w)


def attention_map_from_rollout(
    rollout: ArrayLike,
    visual_mask: ArrayLike,
    grid_thw: ArrayLike,
    level: Literal["video", "frame"],
    spatial_merge: int = 2,
) -> np.ndarray:
    """Qwen-VL map (§5): video → (grid_t, grid_h/m, grid_w/m) of row 0 of `grid_thw` (t counts frame
    pairs); frame → (B, grid_h/m, grid_w/m), one slice per prompt, sizes from `grid_thw[0]`."""
    grid = np.asarray(grid_thw).reshape(-1, 3)
    t, gh, gw = (int(v) for v in grid[0])
    if gh % spatial_merge or gw % spatial_merge:
        raise ValueError(f"grid {grid[0].tolist()} is not divisible by the spatial merge {spatial_merge}")
    if level == "video":
        shape = (t, gh // spatial_merge, gw // spatial_merge)
    elif level == "frame":
        shape = (int(np.shape(rollout)[0]), gh // spatial_merge, gw // spatial_merge)
    else:
        raise ValueError(f"level must be 'video' or 'frame', got {level!r}")
    return rollout_to_map(rollout, visual_mask, shape)


def gaussian_kernel(k: int, sigma: float = 1.0) -> np.ndarray:
    """(k, k) float32 kernel ∝ exp(-(x²+y²)/(2σ²)) on integer offsets −k//2..k//2, summing to 1."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {k}")
    r = torch.arange(k, dtype=torch.float32) - k // 2
    kernel = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return (kernel / kernel.sum()).numpy()


def smooth_maps(maps: ArrayLike, k: int, sigma: float = 1.0) -> np.ndarray:
    """Per-slice 2-D Gaussian convolution with zero padding k//2 (border values lose mass, §5)."""
    x = _as_maps(maps)
    kernel = torch.from_numpy(gaussian_kernel(k, sigma))[None, None]
    return F.conv2d(x[:, None], kernel, padding=k // 2)[:, 0].numpy()


# --- §6: fusion ---------------------------------------------------------------------------------


def contrast(obj: ArrayLike, bg: ArrayLike) -> np.ndarray:
    """clamp(obj − bg, 0, 1)."""
    o, b = _as_tensor(obj), _as_tensor(bg)
    if o.shape != b.shape:
        raise ValueError(f"object map {tuple(o.shape)} and background map {tuple(b.shape)} differ in shape")
    return torch.clamp(o - b, 0.0, 1.0).numpy()


def _min_max(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    lo = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - lo
    span = torch.where(span == 0, torch.ones_like(span), span)  # constant → all zeros, no epsilon
    return (x - lo) / span


def normalize_global(maps: ArrayLike) -> np.ndarray:
    """Min–max over the whole tensor; zero range divides by 1."""
    x = _as_tensor(maps)
    return _min_max(x, tuple(range(x.dim()))).numpy()


def normalize_per_frame(maps: ArrayLike) -> np.ndarray:
    """Min–max per time slice of (t, h, w); a constant slice becomes zeros."""
    return _min_max(_as_maps(maps), (1, 2)).numpy()


def align_video_time(norm_video: ArrayLike, num_frames: int) -> np.ndarray:
    """Repeat each video slice twice when the lengths differ, then drop the last slice if still one too
    many (odd T: the padded frame) (§6.3)."""
    x = _as_maps(norm_video, "video map")
    if x.shape[0] != num_frames:
        x = x.repeat_interleave(2, dim=0)
        if x.shape[0] == num_frames + 1:
            x = x[:-1]
    if x.shape[0] != num_frames:
        raise ValueError(
            f"a video map of {norm_video.shape[0]} slices cannot be aligned to {num_frames} frames"
        )
    return x.numpy()


def resize_bilinear(maps: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """Per-slice bilinear resize to (h, w), align_corners=False, no antialias (F.interpolate)."""
    x = _as_maps(maps)
    # slices as a batch of 1-channel images: the reference layout, bit-identical to it
    out = F.interpolate(x[:, None], size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def align_video_to_frames(norm_video: ArrayLike, num_frames: int, frame_hw: tuple[int, int]) -> np.ndarray:
    """§6.3 + §6.4: (t_v, h_v, w_v) → (T, h_f, w_f)."""
    return resize_bilinear(align_video_time(norm_video, num_frames), frame_hw)


@dataclass
class FusionResult:
    """Every stage of §5 smoothing and §6 fusion, all float32 numpy arrays."""

    smooth_obj_video: np.ndarray
    smooth_bg_video: np.ndarray
    smooth_obj_frame: np.ndarray
    smooth_bg_frame: np.ndarray
    contrast_video: np.ndarray
    contrast_frame: np.ndarray
    norm_video: np.ndarray
    norm_frame: np.ndarray
    video_time_aligned: np.ndarray
    video_upsampled: np.ndarray
    fused: np.ndarray  # (T, h_f, w_f) in [0, 1]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def fuse_maps(
    obj_video: ArrayLike,
    bg_video: ArrayLike,
    obj_frame: ArrayLike,
    bg_frame: ArrayLike,
    cfg: DecafConfig | None = None,
) -> FusionResult:
    """Unsmoothed maps (video (t_v,h_v,w_v), frame (T,h_f,w_f)) → smoothing, contrast, normalisation,
    alignment and complementary fusion (§5–§6)."""
    cfg = cfg or DecafConfig()
    sigma = cfg.gaussian_sigma
    s_ov = smooth_maps(obj_video, cfg.video_kernel_size, sigma)
    s_bv = smooth_maps(bg_video, cfg.video_kernel_size, sigma)
    s_of = smooth_maps(obj_frame, cfg.frame_kernel_size, sigma)
    s_bf = smooth_maps(bg_frame, cfg.frame_kernel_size, sigma)
    c_v, c_f = contrast(s_ov, s_bv), contrast(s_of, s_bf)
    n_v, n_f = normalize_global(c_v), normalize_per_frame(c_f)
    aligned = align_video_time(n_v, n_f.shape[0])
    upsampled = resize_bilinear(aligned, n_f.shape[1:])
    fused = normalize_global((_as_tensor(upsampled) + _as_tensor(n_f)) / 2)
    return FusionResult(s_ov, s_bv, s_of, s_bf, c_v, c_f, n_v, n_f, aligned, upsampled, fused)


# --- §7: coarse masks ----------------------------------------------------------------------------


def coarse_masks(fused: ArrayLike, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused map → (uint8 map (T,H0,W0), Otsu levels (T,) float32, masks uint8 0/255 (T,H0,W0)).

    Bilinear resize to (H0, W0), ×255 truncated to uint8, then OpenCV Otsu per frame (pixels strictly
    above the level become 255).
    """
    up = resize_bilinear(fused, size)
    grey = (up * 255).astype(np.uint8)  # values lie in [0, 255]: astype truncates
    levels = np.zeros(grey.shape[0], dtype=np.float32)
    masks = np.zeros_like(grey)
    for t, frame in enumerate(grey):
        level, masks[t] = cv2.threshold(frame, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        levels[t] = level
    return grey, levels, masks
