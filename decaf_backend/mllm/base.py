"""What the rest of DecAF needs from a multimodal LLM (spec §2–§5), independent of the model family.

Fusion, points and tracking only see `AttentionResult`s; an adapter per family (Qwen2-VL/Qwen2.5-VL now;
InternVL3, LLaVA-OneVision, Qwen3-VL later) turns key frames + prompts into those. No transformers here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..types import AttentionResult

__all__ = ["MLLMAdapter"]


@runtime_checkable
class MLLMAdapter(Protocol):
    """One loaded MLLM, ready to answer DecAF's four prompt kinds with attention rollouts.

    `video_frames` are the key frames, HxWx3 uint8 RGB, all the same size. Each method returning a pair
    gives (video level, frame level) results; `attention_map` of the video result is (t_v, h_v, w_v) and of
    the frame result (T, h_f, w_f) on the merged token grid (spec §5, before smoothing).
    """

    name: str
    num_layers: int
    rollout_start_layer: int
    tokens_per_frame: int
    frame_scale: int
    random_weights: bool

    def object_class(
        self, video_frames: Sequence[np.ndarray], expression: str
    ) -> tuple[AttentionResult, AttentionResult]:
        """Object-class prompts (§2 calls 1–2): answers (video first, then one per frame) and rollouts."""
        ...

    def choose_object(self, expression: str, candidates: Sequence[str]) -> str:
        """Text-only object choice among the object-class answers (§2 call 3); lower-cased."""
        ...

    def background(
        self, video_frames: Sequence[np.ndarray], obj_name: str, expression: str | None = None
    ) -> tuple[AttentionResult, AttentionResult]:
        """Background prompts (§2 calls 4–5): prefill-only rollouts (captions are never used)."""
        ...
