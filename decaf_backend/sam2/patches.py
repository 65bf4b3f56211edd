"""Process-wide changes to the `sam2` package, installed once by the first `Sam2VideoPredictor`.

Each one leaves sam2's results as they are; why each exists:
- `load_video_frames` also takes a `Sam2Frames`: sam2's loader only knows JPEG folders and video paths, and
  writing a folder per task would cost disk and time; the frames are prepared on access instead.
- `tqdm` is silenced in the video predictor: it draws a progress bar per propagation call, which floods the
  logs of a server that propagates for every click.
- `get_connected_components` runs on the CPU (OpenCV) when sam2's CUDA extension `_C` is not built (the
  PyPI wheel and every CPU install): without it sam2 silently skips hole filling (spec §9,
  `fill_hole_area=8`) and the masks differ from the reference's.
"""

from __future__ import annotations

import functools
import importlib.util
import threading
from typing import Any

import numpy as np
import torch

from .frames import Sam2Frames

_lock = threading.Lock()
_installed = False


def install_sam2_patches() -> None:
    """Install the patches above (idempotent, thread-safe)."""
    global _installed
    with _lock:
        if _installed:
            return
        import sam2.sam2_video_predictor as svp
        import sam2.utils.misc as misc
        from tqdm import tqdm

        original_loader = svp.load_video_frames

        @functools.wraps(original_loader)
        def load_video_frames(video_path: Any, image_size: int, *args: Any, **kwargs: Any) -> Any:
            if isinstance(video_path, Sam2Frames):
                if video_path.image_size != image_size:
                    raise ValueError(
                        f"frames prepared for {video_path.image_size} px, model takes {image_size} px"
                    )
                return video_path, video_path.video_height, video_path.video_width
            return original_loader(video_path, image_size, *args, **kwargs)

        svp.load_video_frames = load_video_frames
        svp.tqdm = functools.partial(tqdm, disable=True)
        if importlib.util.find_spec("sam2._C") is None:
            misc.get_connected_components = _connected_components_cpu
        _installed = True


def _connected_components_cpu(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sam2.utils.misc.get_connected_components without CUDA: 8-connected labels and per-pixel component
    areas of (N, 1, H, W) binary masks (0 and area 0 outside the components)."""
    import cv2

    binary = mask.to(torch.uint8).cpu().numpy()
    labels = np.zeros(binary.shape, dtype=np.int32)
    areas = np.zeros(binary.shape, dtype=np.int32)
    for n in range(binary.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(binary[n, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area[0] = 0  # cv2's label 0 is the zero pixels of the input
        labels[n, 0], areas[n, 0] = lab, area[lab]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)
