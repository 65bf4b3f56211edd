"""DecAF prompts on LLaVA-OneVision (`llava_onevision`, HF transformers 5) as the reference runs them (§10).

* System turn "You are a helpful assistant." written explicitly (the HF template has none).
* No newline separator tokens anywhere (the reference sets `use_newline=False`), so visual tokens form
  clean grids.
* Video: each key frame one tile (the video processor's square resize), tower → projector → 2×2 bilinear
  pooling (`apply_pooling`), no temporal merge: grid (T, ceil(p/2), ceil(p/2)) for p patches per side.
* Frame level: the anyres tiles WITHOUT the base (global) image, arranged row-major, unpadded to the
  frame's aspect ratio and bilinearly shrunk when larger than `vision_aspect_ratio` allows; one (h', w')
  grid per frame. The video map is later resized to (h', w') (not an integer factor).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import DecafError
from .prefill import EncodedVisual, PrefillAdapter

__all__ = ["LLAVA_SYSTEM_PROMPT", "LlavaOnevisionAdapter", "anyres_grid"]

LLAVA_SYSTEM_PROMPT = "You are a helpful assistant."


def anyres_grid(model_config: Any, image_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((tile rows, tile cols), (h', w')): the anyres tile layout of an image and its token grid after
    unpadding and the `anyres_max_N` shrink, with transformers' own layout functions."""
    from transformers.models.llava_onevision.modeling_llava_onevision import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    vision = model_config.vision_config
    side = vision.image_size // vision.patch_size
    rows, cols = get_anyres_image_grid_shape(
        list(image_hw), model_config.image_grid_pinpoints, vision.image_size
    )
    unpadded = unpad_image(torch.empty(0, rows * side, cols * side), list(image_hw))
    height, width = unpadded.shape[1:]
    max_tiles = int(model_config.vision_aspect_ratio.removeprefix("anyres_max_"))
    ratio = math.sqrt(height * width / (max_tiles * side**2))
    if ratio > 1.1:  # the same shrink as pack_image_features
        height, width = int(height // ratio), int(width // ratio)
    return (rows, cols), (height, width)


class LlavaOnevisionAdapter(PrefillAdapter):
    system_prompt = LLAVA_SYSTEM_PROMPT

    def __init__(self, model: Any, processor: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, processor, *args, **kwargs)
        self.video_token_id = int(model.config.video_token_id)
        self.image_token_id = int(model.config.image_token_id)
        vision = model.config.vision_config
        self.patches_per_side = int(vision.image_size // vision.patch_size)

    def _encode_video(self, frames: list[np.ndarray]) -> EncodedVisual:
        processed = self.processor.video_processor(videos=[np.stack(frames)], return_tensors="pt")
        pixels = processed["pixel_values_videos"].to(self.device, self.model.dtype)
        # the stock video features end with one newline embedding per video: the reference drops it
        features = self.model.model.get_video_features(pixels, return_dict=True).pooler_output[:, :-1]
        pooled = math.ceil(self.patches_per_side / 2)
        t = len(frames)
        if features.shape[1] != t * pooled * pooled:
            raise DecafError(
                f"LLaVA-OV video features {tuple(features.shape)} do not fit {t}x{pooled}x{pooled}"
            )
        grid = np.array([[t, pooled, pooled]], dtype=np.int64)
        return EncodedVisual("video", 1, features, (t, pooled, pooled), grid)

    def _encode_frames(self, frames: list[np.ndarray]) -> EncodedVisual:
        inner = self.model.model
        config = self.model.config
        processed = self.processor.image_processor(images=frames, return_tensors="pt")
        image_sizes = processed["image_sizes"]
        (rows, cols), (height, width) = anyres_grid(config, tuple(int(v) for v in image_sizes[0]))
        n_tiles = rows * cols
        side = self.patches_per_side
        step = max(1, int(self.config.frame_batch_size))
        features: list[torch.Tensor] = []
        for start in range(0, len(frames), step):
            # slot 0 of each image is the base image: the reference never encodes it
            tiles = processed["pixel_values"][start : start + step, 1 : 1 + n_tiles]
            tiles = tiles.flatten(0, 1).to(self.device, self.model.dtype)
            hidden = inner.vision_tower(tiles, output_hidden_states=True, return_dict=True).hidden_states
            selected = hidden[config.vision_feature_layer]
            if config.vision_feature_select_strategy == "default":
                selected = selected[:, 1:]
            projected = inner.multi_modal_projector(selected).split(n_tiles)
            # pack_image_features expects a base image first: a placeholder that is dropped again
            with_base = [torch.cat([p[:1].new_zeros(1, side * side, p.shape[-1]), p]) for p in projected]
            packed, _ = inner.pack_image_features(
                with_base,
                image_sizes[start : start + len(projected)],
                image_newline=None,
                vision_aspect_ratio=config.vision_aspect_ratio,
            )
            features.extend(p[side * side :] for p in packed)
        if any(f.shape[0] != height * width for f in features):
            raise DecafError(f"LLaVA-OV frame features do not fit the {height}x{width} anyres grid")
        grid = np.tile(np.array([[1, height, width]], dtype=np.int64), (len(frames), 1))
        layout = {"tiles_hw": (rows, cols)}
        return EncodedVisual("image", len(frames), features, (1, height, width), grid, layout)

    def _placeholder(self, kind: str) -> str:
        return self.processor.video_token if kind == "video" else self.processor.image_token

    def _visual_text(self, visual: EncodedVisual) -> str:
        return self._placeholder(visual.kind) * self._tokens_per_item(visual)

    def _visual_mask(self, ids: torch.Tensor, visual: EncodedVisual) -> torch.Tensor:
        return ids == (self.video_token_id if visual.kind == "video" else self.image_token_id)

    def _model_inputs(
        self, ids: torch.Tensor, visual: EncodedVisual, start: int, stop: int
    ) -> dict[str, Any]:
        if visual.kind == "video":
            pooled: Any = visual.features.expand(stop - start, -1, -1)
        else:
            pooled = tuple(visual.features[start:stop])
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_encoder_outputs": {visual.kind: BaseModelOutputWithPooling(pooler_output=pooled)},
        }
