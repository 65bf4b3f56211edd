"""DecAF's three MLLM calls (spec §2), written once for every adapter family.

The base keeps what every adapter holds (model, processor, config, rollout layers, the vision cache keyed by
pixel content); a family adapter provides its vision encodings (`_encode_video` / `_encode_frames`),
`video_level` / `frame_level` (one prompt kind at both levels) and `choice_prompt_ids`, and this base turns
those into the object-class, background and object-choice calls, with the reference's greedy decoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..config import DecafConfig
from ..errors import DecafError
from ..lru import BoundedCache
from ..types import AttentionResult
from . import prompts
from .qk_capture import capture_qk

__all__ = ["DecafCalls", "check_frames"]

_VISION_CACHE_SIZE = 4  # encodings kept: the object and background prompts of a clip share theirs


class DecafCalls:
    def __init__(
        self,
        model: Any,
        processor: Any,
        config: DecafConfig | None = None,
        name: str = "",
        random_weights: bool = False,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.config = config or DecafConfig()
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        self.model_type: str = model.config.model_type
        self.random_weights = random_weights
        text_config = getattr(model.config, "text_config", model.config)
        self.num_layers: int = int(text_config.num_hidden_layers)
        start = self.config.rollout_start_layer
        # default: half depth (§4: 14 of 28 Qwen2.5-VL-7B layers, 24 of the 48-layer InternVL3-14B)
        self.rollout_start_layer: int = self.num_layers // 2 if start is None else int(start)
        if not 0 <= self.rollout_start_layer < self.num_layers:
            raise DecafError(f"rollout_start_layer {start} is outside 0..{self.num_layers - 1}")
        self.tokens_per_frame: int = int(self.config.tokens_per_frame)
        self.frame_scale: int = int(self.config.frame_scale)
        self._vision_cache: BoundedCache[str, Any] = BoundedCache(max_items=_VISION_CACHE_SIZE)

    @property
    def rollout_layers(self) -> range:
        return range(self.rollout_start_layer, self.num_layers)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def object_class(
        self, video_frames: Sequence[np.ndarray], expression: str
    ) -> tuple[AttentionResult, AttentionResult]:
        question = prompts.object_class_prompt(expression, self._version("obj"))
        return self._both_levels(video_frames, question, generate=True)

    def background(
        self, video_frames: Sequence[np.ndarray], obj_name: str, expression: str | None = None
    ) -> tuple[AttentionResult, AttentionResult]:
        question = prompts.background_prompt(obj_name, expression, self._version("bg"))
        return self._both_levels(video_frames, question, generate=False)

    def choose_object(self, expression: str, candidates: Sequence[str]) -> str:
        ids = self.choice_prompt_ids(expression, candidates).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), **self._generation_kwargs()
            )
        return self._decode(out[:, ids.shape[1] :])[0].lower()

    def video_level(
        self, video_frames: Sequence[np.ndarray], question: str, generate: bool
    ) -> AttentionResult:
        """One prompt over the whole clip (§2): rollout, map and, with `generate`, the answer."""
        return self._run(self.encode_video(video_frames), question, generate)

    def frame_level(
        self, video_frames: Sequence[np.ndarray], question: str, generate: bool
    ) -> AttentionResult:
        """One prompt per key frame (§2), batched."""
        return self._run(self.encode_frames(video_frames), question, generate)

    def encode_video(self, video_frames: Sequence[np.ndarray]) -> Any:
        """The clip through the vision tower once (cached per pixel content)."""
        return self._cached_encoding("video", video_frames, self._encode_video)

    def encode_frames(self, video_frames: Sequence[np.ndarray]) -> Any:
        """Each key frame through the vision tower once (cached per pixel content)."""
        return self._cached_encoding("image", video_frames, self._encode_frames)

    def clear_cache(self) -> None:
        self._vision_cache.clear()

    def _cached_encoding(
        self, kind: str, video_frames: Sequence[np.ndarray], encode: Callable[[list[np.ndarray]], Any]
    ) -> Any:
        frames = check_frames(video_frames)
        key = _cache_key(kind, frames)
        visual = self._vision_cache.get(key)
        if visual is None:
            with torch.inference_mode():
                visual = encode(frames)
            self._vision_cache.put(key, visual)
        return visual

    # ----- provided by the family adapter -----

    def _encode_video(self, frames: list[np.ndarray]) -> Any:
        """The checked key frames as one clip through the vision tower."""
        raise NotImplementedError

    def _encode_frames(self, frames: list[np.ndarray]) -> Any:
        """Each checked key frame through the vision tower."""
        raise NotImplementedError

    def _run(self, visual: Any, question: str, generate: bool) -> AttentionResult:
        """Prefill (and answer) one prompt kind over an encoded visual input; the rollout as a map."""
        raise NotImplementedError

    def choice_prompt_ids(self, expression: str, candidates: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    # ----- shared internals -----

    def _version(self, which: str) -> int:
        return int(self.config.extra.get(f"prompt_{which}_version", self.config.prompt_version))

    def _both_levels(
        self, video_frames: Sequence[np.ndarray], question: str, generate: bool
    ) -> tuple[AttentionResult, AttentionResult]:
        frames = check_frames(video_frames)
        return self.video_level(frames, question, generate), self.frame_level(frames, question, generate)

    def _prefill_batch(
        self, inputs: dict[str, Any], prompt_length: int, generate: bool, layers_root: Any
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
        """One prefill of a batch of prompts: the post-RoPE Q and K of the rollout layers under `layers_root`
        (the language model), and with `generate` the greedy answers, which reuse the prefill's cache."""
        answers: list[str] = []
        with torch.inference_mode(), capture_qk(layers_root, self.rollout_layers) as cap:
            if generate:
                out = self.model.generate(**inputs, **self._generation_kwargs())
                answers = self._decode(out[:, prompt_length:])
            else:
                self.model(**inputs, use_cache=False, logits_to_keep=1)
            return cap.q_list(), cap.k_list(), answers

    def _generation_kwargs(self) -> dict[str, Any]:
        # greedy as in the reference; the checkpoint's own generation config (eos, suppression) still applies
        return {
            "max_new_tokens": int(self.config.max_new_tokens),
            "do_sample": False,
            "num_beams": 1,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "use_cache": True,
        }

    def _decode(self, new_tokens: torch.Tensor) -> list[str]:
        texts = self.processor.batch_decode(
            new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [t.strip() for t in texts]


def check_frames(video_frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Key frames as C-contiguous, writable uint8 HxWx3 arrays of one size (the processors wrap them in tensors)."""
    frames = [np.asarray(f) for f in video_frames]
    if not frames:
        raise DecafError("no key frames were given to the MLLM")
    for f in frames:
        if f.ndim != 3 or f.shape[2] != 3 or f.shape != frames[0].shape:
            raise DecafError(
                f"key frames must all be HxWx3 RGB of one size, got {f.shape} and {frames[0].shape}"
            )
    return [np.require(f, np.uint8, ["C", "W"]) for f in frames]


def _cache_key(kind: str, frames: Sequence[np.ndarray]) -> str:
    """A digest of the prompt kind and the frames' pixels (checked: C-contiguous uint8 of one size)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{kind}:{len(frames)}:{frames[0].shape}".encode())
    for f in frames:
        digest.update(f.data)
    return digest.hexdigest()
