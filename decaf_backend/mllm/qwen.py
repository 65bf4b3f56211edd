"""DecAF prompts on Qwen2.5-VL and Qwen2-VL (spec §2–§5, §10, §14.4) with HF transformers 5.

Per prompt kind we run one prefill while capturing post-RoPE Q/K of the rollout layers only
(`qk_capture`), then roll out blockwise from Q/K (`rollout.rollout_last_row_from_qk`): no
`output_attentions`, no L×L matrix per layer. Object prompts then generate their short answer with the
prefill's KV cache (HF `generate`, whose first forward is that prefill); background prompts only prefill.
Vision-encoder outputs are cached per pixel content, so object and background prompts share them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from ..errors import DecafError
from ..fusion import rollout_to_map
from ..rollout import rollout_last_row_from_qk
from ..types import AttentionResult
from . import prompts
from .calls import DecafCalls

__all__ = ["QWEN_MODEL_TYPES", "QwenVLAdapter", "resize_frame", "smart_resize", "video_frame_size"]

QWEN_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")

# qwen-vl-utils limits (one LLM token per 28×28 px): images/frames at least 4 tokens, at most 16384
_MIN_PIXELS = 4 * 28 * 28
_MAX_PIXELS = 16384 * 28 * 28
# the reference gives its key frames no timing, so the Qwen processor's default fps of 2 applies
_KEY_FRAME_FPS = 2.0


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = _MIN_PIXELS, max_pixels: int = _MAX_PIXELS
) -> tuple[int, int]:
    """qwen-vl-utils rule (spec §3): sides to multiples of `factor`, area within [min_pixels, max_pixels]."""
    if min(height, width) <= 0:
        raise DecafError(f"frame size {height}x{width} is empty")
    if max(height, width) / min(height, width) > 200:
        raise DecafError(f"frame aspect ratio {height}x{width} is too extreme for Qwen-VL (max 200:1)")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def video_frame_size(height: int, width: int, tokens_per_frame: int, factor: int = 28) -> tuple[int, int]:
    """Pixel size of each key frame in the video prompt: at most `tokens_per_frame` merged tokens."""
    return smart_resize(height, width, factor, _MIN_PIXELS, tokens_per_frame * factor * factor)


def resize_frame(frame: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.asarray(frame, dtype=np.uint8)).convert("RGB")
    if image.size != (size_hw[1], size_hw[0]):  # bicubic: PIL's default, as in qwen-vl-utils
        image = image.resize((size_hw[1], size_hw[0]), Image.Resampling.BICUBIC)
    return np.array(image)  # writable: torch.from_numpy warns on read-only arrays


@dataclass
class _Visual:
    """One visual input, encoded once: per prompt item its grid (t, h, w) in patches and its features."""

    kind: str  # "video" or "image"
    grid_thw: torch.Tensor  # (n_items, 3) long
    features: tuple[torch.Tensor, ...]  # per item (tokens, hidden)


class QwenVLAdapter(DecafCalls):
    """`MLLMAdapter` for Qwen2.5-VL and Qwen2-VL checkpoints (same prompts, sizes and rollout; §10)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # model, processor, config, name, random_weights
        super().__init__(*args, **kwargs)
        vision_config = self.model.config.vision_config
        self.merge_size: int = int(vision_config.spatial_merge_size)
        self.temporal_patch_size: int = int(vision_config.temporal_patch_size)
        self.factor: int = int(vision_config.patch_size) * self.merge_size
        self.video_token_id: int = int(self.model.config.video_token_id)
        self.image_token_id: int = int(self.model.config.image_token_id)
        self._accepts_seconds = "second_per_grid_ts" in inspect.signature(self.model.forward).parameters

    # ----- building blocks (public for tests and other callers) -----

    def choice_prompt_ids(self, expression: str, candidates: Sequence[str]) -> torch.Tensor:
        """(1, L) ids of the text-only object-choice prompt (§2 call 3)."""
        question = prompts.object_choice_prompt(expression, candidates, self._version("choice"))
        return self._prompt_ids(question, None, 0)

    def video_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size of key frames in the video prompt (spec §3)."""
        return video_frame_size(height, width, self.tokens_per_frame, self.factor)

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """Pixel size of a key frame in its own frame prompt: `frame_scale` × the video grid per side."""
        h_v, w_v = self.video_size(height, width)
        size = (h_v * self.frame_scale, w_v * self.frame_scale)
        return smart_resize(size[0], size[1], self.factor)  # qwen-vl-utils still applies its default limits

    # ----- internals -----

    def _encode_video(self, frames: list[np.ndarray]) -> _Visual:
        size = self.video_size(*frames[0].shape[:2])
        clip = [resize_frame(f, size) for f in frames]
        if len(clip) % self.temporal_patch_size:  # qwen-vl-utils: repeat the last frame up to an even count
            clip += [clip[-1]] * (self.temporal_patch_size - len(clip) % self.temporal_patch_size)
        processed = self.processor.video_processor(
            videos=[np.stack(clip)], do_resize=False, return_tensors="pt", **self._video_processor_kwargs()
        )
        grid = processed["video_grid_thw"].to(self.device)
        pixels = processed["pixel_values_videos"].to(self.device)
        features = self.model.model.get_video_features(pixels, grid, return_dict=True).pooler_output
        return _Visual("video", grid, tuple(features))

    def _encode_frames(self, frames: list[np.ndarray]) -> _Visual:
        size = self.frame_size(*frames[0].shape[:2])
        grids, features = [], []
        step = max(1, int(self.config.frame_batch_size))
        for start in range(0, len(frames), step):
            images = [resize_frame(f, size) for f in frames[start : start + step]]
            processed = self.processor.image_processor(images=images, do_resize=False, return_tensors="pt")
            grid = processed["image_grid_thw"].to(self.device)
            pixels = processed["pixel_values"].to(self.device)
            features.extend(self.model.model.get_image_features(pixels, grid, return_dict=True).pooler_output)
            grids.append(grid)
        return _Visual("image", torch.cat(grids), tuple(features))

    def _video_processor_kwargs(self) -> dict[str, Any]:
        # transformers 5 warns on every video call unless told; we resize ourselves anyway
        params = inspect.signature(self.processor.video_processor._preprocess).parameters
        return {"cap_pixels_per_frame": False} if "cap_pixels_per_frame" in params else {}

    def _prompt_ids(self, question: str, kind: str | None, num_visual_tokens: int) -> torch.Tensor:
        """(1, L) token ids of one chat prompt: [visual item, question] in a user turn (spec §2)."""
        content: list[dict[str, str]] = [] if kind is None else [{"type": kind}]
        content.append({"type": "text", "text": question})
        text = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        if kind is not None:
            pad = self.processor.video_token if kind == "video" else self.processor.image_token
            if text.count(pad) != 1:
                raise DecafError(
                    f"the chat template put {text.count(pad)} {pad} tokens in the prompt, expected 1"
                )
            text = text.replace(pad, pad * num_visual_tokens)
        ids = self.processor.tokenizer(text, return_tensors="pt")["input_ids"]
        if kind is not None:
            token = self.video_token_id if kind == "video" else self.image_token_id
            if int((ids == token).sum()) != num_visual_tokens:
                raise DecafError("the tokenizer did not keep the visual pad tokens intact")
        return ids

    def _prefills(
        self, visual: _Visual, question: str, generate: bool
    ) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor], list[str]]]:
        """Per batch of prompts: the rollout layers' post-RoPE Q and K of the prefill, and the answers."""
        ids_one = self._question_ids(visual, question)
        n_items = len(visual.features)
        # frame prompts share one length (same frame size, same text), so batches need no padding (§13)
        step = n_items if visual.kind == "video" else max(1, int(self.config.frame_batch_size))
        for start in range(0, n_items, step):
            stop = min(n_items, start + step)
            ids = ids_one.expand(stop - start, -1).to(self.device)
            inputs = self._model_inputs(ids, visual, start, stop)
            yield self._prefill_batch(inputs, ids.shape[1], generate, self.model)

    def _question_ids(self, visual: _Visual, question: str) -> torch.Tensor:
        grid = visual.grid_thw
        if not bool((grid == grid[0]).all()):
            raise DecafError("all key frames must have the same size")
        return self._prompt_ids(question, visual.kind, int(grid[0].prod()) // self.merge_size**2)

    def _visual_range(self, visual: _Visual, ids: torch.Tensor) -> tuple[int, int]:
        token = self.video_token_id if visual.kind == "video" else self.image_token_id
        positions = torch.nonzero(ids[0] == token).flatten()
        return int(positions[0]), int(positions[-1])

    def video_prompt_qk(
        self, video_frames: Sequence[np.ndarray], question: str
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], tuple[int, int]]:
        """Q/K of the rollout layers from one prefill of a video-level prompt, and its visual range
        (for benchmarks and checks that compare rollout implementations on the model's own Q/K)."""
        visual = self.encode_video(video_frames)
        q_list, k_list, _ = next(self._prefills(visual, question, generate=False))
        return q_list, k_list, self._visual_range(visual, self._question_ids(visual, question))

    def _run(self, visual: _Visual, question: str, generate: bool) -> AttentionResult:
        ids_one = self._question_ids(visual, question)
        visual_range = self._visual_range(visual, ids_one)
        rows, answers = [], []
        for q_list, k_list, batch_answers in self._prefills(visual, question, generate):
            rows.append(
                rollout_last_row_from_qk(
                    q_list, k_list, visual_range, block_rows=self.config.rollout_block_rows
                )
            )
            answers.extend(batch_answers)
            del q_list, k_list
        n_items = len(visual.features)
        rollout = torch.cat(rows).cpu().numpy().astype(np.float32)
        input_ids = ids_one.expand(n_items, -1).numpy().astype(np.int64)
        token = self.video_token_id if visual.kind == "video" else self.image_token_id
        visual_mask = input_ids == token
        grid_np = visual.grid_thw.cpu().numpy().astype(np.int64)
        t = int(grid_np[0, 0]) if visual.kind == "video" else n_items
        shape = (t, int(grid_np[0, 1]) // self.merge_size, int(grid_np[0, 2]) // self.merge_size)
        return AttentionResult(
            rollout=rollout,
            visual_mask=visual_mask,
            attention_map=rollout_to_map(rollout, visual_mask, shape),
            input_ids=input_ids,
            answers=answers if generate else None,
            grid_thw=grid_np,
        )

    def _model_inputs(self, ids: torch.Tensor, visual: _Visual, start: int, stop: int) -> dict[str, Any]:
        token = self.video_token_id if visual.kind == "video" else self.image_token_id
        type_id = 2 if visual.kind == "video" else 1  # mm_token_type_ids: text 0, image 1, video 2
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == token).to(torch.int32) * type_id,
            f"{visual.kind}_grid_thw": visual.grid_thw[start:stop],
            "mm_encoder_outputs": {
                visual.kind: BaseModelOutputWithPooling(pooler_output=visual.features[start:stop])
            },
        }
        if visual.kind == "video" and self._accepts_seconds:
            # transformers 5 assumes 24 fps for frames without metadata; the reference has 2 fps (§4 Positions)
            seconds = self.temporal_patch_size / _KEY_FRAME_FPS
            inputs["second_per_grid_ts"] = torch.full((stop - start,), seconds, device=self.device)
        return inputs
