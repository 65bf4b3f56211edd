"""DecAF prompts on InternVL3 `-hf` checkpoints (`internvl`, HF transformers 5) as the reference runs them (§10).

* System turn: InternVL's default Chinese system text, written explicitly (the HF template has none).
* Video: each key frame one square tile (the video processor's resize) of s×s tokens (s = 16 for 448 px
  tiles after pixel shuffle), written as "FrameN: <img><IMG_CONTEXT>×s²</img>" lines: grid (T, s, s).
* Frame level: the frame cut into the tiles of `get_optimal_tiled_canvas` (at most `max_patches`)
  WITHOUT the thumbnail tile, one "<img>…</img>" block; tokens are tile-major, raster inside a tile, and
  are laid out as a (rows·s, cols·s) map.
* Visual tokens are not contiguous (frame labels and <img> tags sit between them), so head weights take
  the max over the exact `<IMG_CONTEXT>` positions (the reference's gather), not the first-to-last span.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import DecafError
from .prefill import EncodedVisual, PrefillAdapter

__all__ = ["INTERNVL_SYSTEM_PROMPT", "InternVLAdapter", "tiling"]

# InternVL's default system message (the reference's SYS_INTERNVL)
INTERNVL_SYSTEM_PROMPT = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


def tiling(image_processor: Any, image_hw: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the tiles the image processor cuts an image of this size into."""
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    size = image_processor.size
    tile_hw = (int(size["height"]), int(size["width"]))
    cols, rows = get_optimal_tiled_canvas(
        image_hw, tile_hw, int(image_processor.min_patches), int(image_processor.max_patches)
    )
    return int(rows), int(cols)


class InternVLAdapter(PrefillAdapter):
    system_prompt = INTERNVL_SYSTEM_PROMPT
    exact_visual_positions = True

    def __init__(self, model: Any, processor: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, processor, *args, **kwargs)
        self.context_token_id = int(model.config.image_token_id)
        self.tokens_per_tile = int(processor.image_seq_length)
        self.tile_side = math.isqrt(self.tokens_per_tile)
        if self.tile_side**2 != self.tokens_per_tile:
            raise DecafError(f"InternVL image_seq_length {self.tokens_per_tile} is not a square grid")

    def _tile_features(self, tiles: torch.Tensor) -> torch.Tensor:
        """(n, s², hidden) features of n tiles, in batches of `frame_batch_size` tiles."""
        step = max(1, int(self.config.frame_batch_size))
        out = [
            self.model.model.get_image_features(
                pixel_values=tiles[i : i + step].to(self.device, self.model.dtype), return_dict=True
            ).pooler_output
            for i in range(0, len(tiles), step)
        ]
        return torch.cat(out)

    def _encode_video(self, frames: list[np.ndarray]) -> EncodedVisual:
        processed = self.processor.video_processor(videos=[np.stack(frames)], return_tensors="pt")
        features = self._tile_features(processed["pixel_values_videos"][0])
        s, t = self.tile_side, len(frames)
        grid = np.array([[t, s, s]], dtype=np.int64)
        return EncodedVisual("video", 1, features.reshape(1, -1, features.shape[-1]), (t, s, s), grid)

    def _encode_frames(self, frames: list[np.ndarray]) -> EncodedVisual:
        image_processor = self.processor.image_processor
        rows, cols = tiling(image_processor, frames[0].shape[:2])
        n_tiles = rows * cols
        processed = image_processor(images=frames, crop_to_patches=True, return_tensors="pt")
        num_patches = [int(n) for n in processed["num_patches"]]
        # with more than one tile the processor appends a thumbnail tile: the reference drops it
        expected = n_tiles + (1 if n_tiles > 1 else 0)
        if any(n != expected for n in num_patches):
            raise DecafError(
                f"InternVL image processor cut {num_patches} tiles, expected {expected} per frame"
            )
        pixels = processed["pixel_values"].reshape(
            len(frames), expected, *processed["pixel_values"].shape[1:]
        )
        features = self._tile_features(pixels[:, :n_tiles].flatten(0, 1))
        features = features.reshape(len(frames), n_tiles * self.tokens_per_tile, -1)
        s = self.tile_side
        grid = np.array([[1, s, s]], dtype=np.int64)
        layout = {"tiles_hw": (rows, cols)}
        return EncodedVisual("image", len(frames), features, (1, rows * s, cols * s), grid, layout)

    def _placeholder(self, kind: str) -> str:
        return self.processor.video_token if kind == "video" else self.processor.image_token

    def _visual_text(self, visual: EncodedVisual) -> str:
        start, end = self.processor.start_image_token, self.processor.end_image_token
        context = self.processor.image_token
        if visual.kind == "video":
            block = f"{start}{context * self.tokens_per_tile}{end}"
            return "\n".join(f"Frame{i + 1}: {block}" for i in range(visual.map_shape[0]))
        return f"{start}{context * self._tokens_per_item(visual)}{end}"

    def _visual_mask(self, ids: torch.Tensor, visual: EncodedVisual) -> torch.Tensor:
        return ids == self.context_token_id  # the same context token for video and frames

    def _model_inputs(
        self, ids: torch.Tensor, visual: EncodedVisual, start: int, stop: int
    ) -> dict[str, Any]:
        features = visual.features[start:stop]
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=features)},
        }

    def _tokens_to_map(self, values: np.ndarray, visual: EncodedVisual) -> np.ndarray:
        if visual.kind == "video":
            return values.reshape(visual.map_shape)
        rows, cols = visual.layout["tiles_hw"]
        s = self.tile_side
        # tile-major tokens (rows, cols, s, s) → one (rows·s, cols·s) map
        return values.reshape(rows, cols, s, s).transpose(0, 2, 1, 3).reshape(1, rows * s, cols * s)
