"""What SAM2 reads as the video: lazily prepared frames and a bounded cache of their image features.

SAM2's own loader reads a JPEG folder into one (T, 3, S, S) tensor; `Sam2Frames` gives it the same images
one at a time from any lazy frame sequence (a VideoReader), so no folder is written and a long video is never
held as S² float tensors.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import VideoError
from ..video import as_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Sam2Frames:
    """SAM2's `state["images"]` over a lazy frame sequence: item i is frame i resized to image_size² and
    ImageNet-normalised, (3, S, S) float32 on the CPU, made on access (small LRU for repeated key frames).

    The resize/normalise steps are those of sam2's own JPEG loader (PIL bicubic, /255, mean/std).
    """

    def __init__(self, frames: Sequence[np.ndarray], image_size: int, cache_size: int = 16) -> None:
        if len(frames) == 0:
            raise VideoError("SAM2 needs at least one frame")
        self.frames, self.image_size = frames, int(image_size)
        first = as_rgb(frames[0])
        self.video_height, self.video_width = int(first.shape[0]), int(first.shape[1])
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = int(index)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        frame = as_rgb(self.frames[index])
        if frame.shape[:2] != (self.video_height, self.video_width):
            raise VideoError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, frame 0 is "
                f"{self.video_width}x{self.video_height}: all frames must have one size"
            )
        size = (self.image_size, self.image_size)
        resized = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
        image = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32)
        image = (image - self._mean) / self._std
        with self._lock:
            self._cache[index] = image
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return image


class _FeatureCache(OrderedDict):
    """frame index -> (image, backbone features), least recently used first."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = max(1, capacity)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
        return super().get(key, default)


class FeatureCachingState(dict):
    """A sam2 inference state whose `cached_features` keeps `capacity` frames instead of the last one.

    sam2 replaces `state["cached_features"]` by a one-entry dict after each image encoding; here that
    assignment merges into a bounded LRU. Everything else is the plain sam2 state dict.
    """

    def __init__(self, state: dict[str, Any], capacity: int) -> None:
        super().__init__(state)
        cache = _FeatureCache(capacity)
        cache.update(state.get("cached_features") or {})
        super().__setitem__("cached_features", cache)

    def __setitem__(self, key: str, value: Any) -> None:
        cache = self.get("cached_features")
        if key != "cached_features" or not isinstance(cache, _FeatureCache):
            super().__setitem__(key, value)
            return
        for frame_idx, features in value.items():
            cache[frame_idx] = features
            cache.move_to_end(frame_idx)
        while len(cache) > cache.capacity:
            cache.popitem(last=False)
