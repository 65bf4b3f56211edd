"""DecAF prompts on Qwen3-VL (`qwen3_vl`, HF transformers 5). Newer than the paper: no reference run exists.

The Qwen sizing of spec §3 carries over with Qwen3-VL's own patch (16 px, 2×2 merge → 32 px per token,
2 frames per temporal patch): video frames at most `tokens_per_frame` tokens, frame prompts ×`frame_scale`
per side, odd frame counts padded by repeating the last frame. Everything else is the model's own:
* its chat template (no default system turn), and its video layout, where every frame pair is its own
  "<t seconds><|vision_start|>…<|vision_end|>" block (the processor's `replace_video_token`, with the
  key frames timed at 2 fps as the Qwen processors assume for untimed frames, spec §4);
* DeepStack features, cached with the encoder output and handed back to the model's forward.
Because of the timestamps the visual tokens of a video prompt are not contiguous, so the head weights
take the max over the exact visual positions (as the reference does for InternVL).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from .prefill import EncodedVisual, PrefillAdapter
from .qwen import resize_frame, smart_resize, video_frame_size

__all__ = ["Qwen3VLAdapter"]

_KEY_FRAME_FPS = 2.0


class Qwen3VLAdapter(PrefillAdapter):
    exact_visual_positions = True

    def __init__(self, model: Any, processor: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, processor, *args, **kwargs)
        vision = model.config.vision_config
        self.merge_size = int(vision.spatial_merge_size)
        self.temporal_patch_size = int(vision.temporal_patch_size)
        self.factor = int(vision.patch_size) * self.merge_size
        self.video_token_id = int(model.config.video_token_id)
        self.image_token_id = int(model.config.image_token_id)

    def video_size(self, height: int, width: int) -> tuple[int, int]:
        return video_frame_size(height, width, self.tokens_per_frame, self.factor)

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        h_v, w_v = self.video_size(height, width)
        return smart_resize(h_v * self.frame_scale, w_v * self.frame_scale, self.factor)

    def _encode_video(self, frames: list[np.ndarray]) -> EncodedVisual:
        from transformers.video_utils import VideoMetadata

        size = self.video_size(*frames[0].shape[:2])
        clip = [resize_frame(f, size) for f in frames]
        if len(clip) % self.temporal_patch_size:  # as qwen-vl-utils: repeat the last frame
            clip += [clip[-1]] * (self.temporal_patch_size - len(clip) % self.temporal_patch_size)
        metadata = VideoMetadata(
            total_num_frames=len(clip), fps=_KEY_FRAME_FPS, frames_indices=list(range(len(clip)))
        )
        video_processor = self.processor.video_processor
        extra = {}
        if "cap_pixels_per_frame" in inspect.signature(video_processor._preprocess).parameters:
            extra["cap_pixels_per_frame"] = False  # silences a per-call warning; we resized already
        processed = video_processor(
            videos=[np.stack(clip)],
            video_metadata=[metadata],
            do_resize=False,
            do_sample_frames=False,
            return_metadata=True,
            return_tensors="pt",
            **extra,
        )
        grid = processed["video_grid_thw"].to(self.device)
        output = self.model.model.get_video_features(
            processed["pixel_values_videos"].to(self.device), grid, return_dict=True
        )
        t, gh, gw = (int(v) for v in grid[0])
        map_shape = (t, gh // self.merge_size, gw // self.merge_size)
        layout = {"grid": grid, "processed": processed}
        return EncodedVisual("video", 1, output, map_shape, grid.cpu().numpy().astype(np.int64), layout)

    def _encode_frames(self, frames: list[np.ndarray]) -> EncodedVisual:
        size = self.frame_size(*frames[0].shape[:2])
        processed = self.processor.image_processor(
            images=[resize_frame(f, size) for f in frames], do_resize=False, return_tensors="pt"
        )
        grid = processed["image_grid_thw"].to(self.device)
        output = self.model.model.get_image_features(
            processed["pixel_values"].to(self.device), grid, return_dict=True
        )
        _, gh, gw = (int(v) for v in grid[0])
        map_shape = (1, gh // self.merge_size, gw // self.merge_size)
        grid_np = grid.cpu().numpy().astype(np.int64)
        return EncodedVisual("image", len(frames), output, map_shape, grid_np, {"grid": grid})

    def _placeholder(self, kind: str) -> str:
        return self.processor.video_token if kind == "video" else self.processor.image_token

    def _visual_text(self, visual: EncodedVisual) -> str:
        if visual.kind == "video":  # the model's own per-frame-pair blocks with timestamps
            return self.processor.replace_video_token(visual.layout["processed"], video_idx=0)
        return self.processor.image_token * self._tokens_per_item(visual)

    def _visual_mask(self, ids: torch.Tensor, visual: EncodedVisual) -> torch.Tensor:
        return ids == (self.video_token_id if visual.kind == "video" else self.image_token_id)

    def _model_inputs(
        self, ids: torch.Tensor, visual: EncodedVisual, start: int, stop: int
    ) -> dict[str, Any]:
        output = visual.features
        if visual.kind == "image":  # this batch's frames only, pooled and DeepStack features alike
            output = type(output)(
                pooler_output=output.pooler_output[start:stop],
                deepstack_features=[feat[start:stop] for feat in output.deepstack_features],
            )
        type_id = 2 if visual.kind == "video" else 1  # mm_token_type_ids: text 0, image 1, video 2
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": self._visual_mask(ids, visual).to(torch.int32) * type_id,
            f"{visual.kind}_grid_thw": visual.layout["grid"][start:stop],
            "mm_encoder_outputs": {visual.kind: output},
        }
