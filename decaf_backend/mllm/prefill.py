"""What the LLaVA-OneVision, InternVL3 and Qwen3-VL adapters share (spec §2, §4, §10, §14.4).

A family adapter says how key frames become encoder outputs, how the chat template's visual placeholder
expands into tokens, what the model's forward needs to take the cached encoder outputs, and how a
prompt's visual tokens map onto its (t, h, w) grid. This base runs the rest the same way for all: one
prefill per batch of prompts with post-RoPE Q/K captured on the rollout layers only, the blockwise
rollout from Q/K, greedy answers reusing the prefill for object prompts, prefill only for background
prompts, and one vision encoding per pixel content shared by object and background prompts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import DecafConfig
from ..errors import DecafError
from ..lru import BoundedCache
from ..rollout import rollout_last_row_from_qk
from ..types import AttentionResult
from . import prompts
from .qk_capture import capture_qk

__all__ = ["EncodedVisual", "PrefillAdapter", "check_frames"]

_VISION_CACHE_SIZE = 4


@dataclass
class EncodedVisual:
    """One visual input encoded once: `items` prompts (1 for the clip, T for frame level)."""

    kind: str  # "video" (one prompt for the clip) or "image" (one prompt per key frame)
    items: int
    features: Any  # what the family's `_model_inputs` slices per batch
    map_shape: tuple[int, int, int]  # (t, h, w) of one prompt's map
    grid_thw: np.ndarray  # reported grid (the reference's convention per family)
    layout: dict[str, Any] = field(default_factory=dict)  # family extras (tiling, token counts)


class PrefillAdapter:
    """`MLLMAdapter` machinery; subclasses implement the hooks at the end of the class."""

    system_prompt: str | None = None  # the system turn the reference writes (None: the template's own)
    # head weights over the exact visual positions (InternVL reference) instead of the first-to-last span
    exact_visual_positions: bool = False

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
        # default: half depth (§4: 14 of 28 layers, 24 of the 48-layer InternVL3-14B)
        self.rollout_start_layer: int = self.num_layers // 2 if start is None else int(start)
        if not 0 <= self.rollout_start_layer < self.num_layers:
            raise DecafError(f"rollout_start_layer {start} is outside 0..{self.num_layers - 1}")
        self.tokens_per_frame: int = int(self.config.tokens_per_frame)
        self.frame_scale: int = int(self.config.frame_scale)
        self._vision_cache: BoundedCache[str, EncodedVisual] = BoundedCache(max_items=_VISION_CACHE_SIZE)

    @property
    def rollout_layers(self) -> range:
        return range(self.rollout_start_layer, self.num_layers)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ----- the three DecAF calls -----

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

    # ----- building blocks (public for tests) -----

    def video_level(
        self, video_frames: Sequence[np.ndarray], question: str, generate: bool
    ) -> AttentionResult:
        return self._run(self.encode_video(video_frames), question, generate)

    def frame_level(
        self, video_frames: Sequence[np.ndarray], question: str, generate: bool
    ) -> AttentionResult:
        return self._run(self.encode_frames(video_frames), question, generate)

    def encode_video(self, video_frames: Sequence[np.ndarray]) -> EncodedVisual:
        return self._cached_encoding("video", video_frames, self._encode_video)

    def encode_frames(self, video_frames: Sequence[np.ndarray]) -> EncodedVisual:
        return self._cached_encoding("image", video_frames, self._encode_frames)

    def prompt_ids(self, question: str, visual: EncodedVisual | None) -> torch.Tensor:
        """(1, L) ids of one prompt: [system turn], user turn [visual item, question], assistant header."""
        content: list[dict[str, str]] = [] if visual is None else [{"type": visual.kind}]
        content.append({"type": "text", "text": question})
        messages: list[dict[str, Any]] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        messages.append({"role": "user", "content": content})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if visual is not None:
            placeholder = self._placeholder(visual.kind)
            if text.count(placeholder) != 1:
                raise DecafError(
                    f"the chat template wrote {text.count(placeholder)} {placeholder} placeholders, expected 1"
                )
            text = text.replace(placeholder, self._visual_text(visual))
        ids = self.processor.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if visual is not None and int(self._visual_mask(ids, visual).sum()) != self._tokens_per_item(visual):
            raise DecafError("the tokenizer did not keep the visual tokens intact")
        return ids

    def choice_prompt_ids(self, expression: str, candidates: Sequence[str]) -> torch.Tensor:
        question = prompts.object_choice_prompt(expression, candidates, self._version("choice"))
        return self.prompt_ids(question, None)

    def visual_positions(self, ids: torch.Tensor, visual: EncodedVisual) -> torch.Tensor:
        """Positions of the visual tokens of a (1, L) prompt, in sequence order."""
        return torch.nonzero(self._visual_mask(ids, visual)[0]).flatten()

    def prompt_qk(
        self, visual: EncodedVisual, question: str
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(ids, Q per rollout layer, K per rollout layer) of the first batch's prefill (for checks)."""
        ids = self.prompt_ids(question, visual)
        q_list, k_list, _ = next(self._prefills(visual, ids, generate=False))
        return ids, q_list, k_list

    def clear_cache(self) -> None:
        self._vision_cache.clear()

    # ----- internals -----

    def _version(self, which: str) -> int:
        return int(self.config.extra.get(f"prompt_{which}_version", self.config.prompt_version))

    def _both_levels(
        self, video_frames: Sequence[np.ndarray], question: str, generate: bool
    ) -> tuple[AttentionResult, AttentionResult]:
        frames = check_frames(video_frames)
        return self.video_level(frames, question, generate), self.frame_level(frames, question, generate)

    def _cached_encoding(self, kind: str, video_frames: Sequence[np.ndarray], encode: Any) -> EncodedVisual:
        frames = check_frames(video_frames)
        key = _cache_key(kind, frames)
        visual = self._vision_cache.get(key)
        if visual is None:
            with torch.inference_mode():
                visual = encode(frames)
            self._vision_cache.put(key, visual)
        return visual

    def _prefills(
        self, visual: EncodedVisual, ids_one: torch.Tensor, generate: bool
    ) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor], list[str]]]:
        # frame prompts share one length (same frame size, same text): batches need no padding (§13)
        step = visual.items if visual.kind == "video" else max(1, int(self.config.frame_batch_size))
        for start in range(0, visual.items, step):
            stop = min(visual.items, start + step)
            ids = ids_one.expand(stop - start, -1).to(self.device)
            inputs = self._model_inputs(ids, visual, start, stop)
            answers: list[str] = []
            # the language model only: vision towers (SigLIP, InternViT) have q/k projections too
            with (
                torch.inference_mode(),
                capture_qk(self.model.model.language_model, self.rollout_layers) as cap,
            ):
                if generate:
                    out = self.model.generate(**inputs, **self._generation_kwargs())
                    answers = self._decode(out[:, ids.shape[1] :])
                else:
                    self.model(**inputs, use_cache=False, logits_to_keep=1)
                q_list, k_list = cap.q_list(), cap.k_list()
            yield q_list, k_list, answers
            del q_list, k_list, cap

    def _run(self, visual: EncodedVisual, question: str, generate: bool) -> AttentionResult:
        ids_one = self.prompt_ids(question, visual)
        positions = self.visual_positions(ids_one, visual)
        span = (int(positions[0]), int(positions[-1]))
        exact = positions if self.exact_visual_positions else None
        rows, answers = [], []
        for q_list, k_list, batch_answers in self._prefills(visual, ids_one, generate):
            rows.append(
                rollout_last_row_from_qk(
                    q_list,
                    k_list,
                    span,
                    block_rows=self.config.rollout_block_rows,
                    visual_positions=None if exact is None else exact.to(q_list[0].device),
                )
            )
            answers.extend(batch_answers)
            del q_list, k_list
        rollout = torch.cat(rows).cpu().numpy().astype(np.float32)
        input_ids = ids_one.expand(visual.items, -1).numpy().astype(np.int64)
        visual_mask = self._visual_mask(torch.from_numpy(input_ids), visual).numpy()
        tokens = rollout[visual_mask].reshape(visual.items, -1)
        maps = np.concatenate([self._tokens_to_map(row, visual) for row in tokens]).astype(np.float32)
        return AttentionResult(
            rollout=rollout,
            visual_mask=visual_mask,
            attention_map=maps,
            input_ids=input_ids,
            answers=answers if generate else None,
            grid_thw=visual.grid_thw,
        )

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

    def _tokens_per_item(self, visual: EncodedVisual) -> int:
        t, h, w = visual.map_shape
        return t * h * w

    # ----- family hooks -----

    def _encode_video(self, frames: list[np.ndarray]) -> EncodedVisual:
        raise NotImplementedError

    def _encode_frames(self, frames: list[np.ndarray]) -> EncodedVisual:
        raise NotImplementedError

    def _placeholder(self, kind: str) -> str:
        """What the chat template writes for a {"type": kind} item."""
        raise NotImplementedError

    def _visual_text(self, visual: EncodedVisual) -> str:
        """The text that replaces the placeholder: the visual tokens and the family's separators."""
        raise NotImplementedError

    def _visual_mask(self, ids: torch.Tensor, visual: EncodedVisual) -> torch.Tensor:
        raise NotImplementedError

    def _model_inputs(
        self, ids: torch.Tensor, visual: EncodedVisual, start: int, stop: int
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _tokens_to_map(self, values: np.ndarray, visual: EncodedVisual) -> np.ndarray:
        """One prompt's visual-token values in sequence order → its (t, h, w) map."""
        return values.reshape(visual.map_shape)


def check_frames(video_frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    frames = [np.asarray(f) for f in video_frames]
    if not frames:
        raise DecafError("no key frames were given to the MLLM")
    for f in frames:
        if f.ndim != 3 or f.shape[2] != 3 or f.shape != frames[0].shape:
            raise DecafError(
                f"key frames must all be HxWx3 RGB of one size, got {f.shape} and {frames[0].shape}"
            )
    return [np.require(f, np.uint8, ["C", "W"]) for f in frames]  # the processors wrap them in tensors


def _cache_key(kind: str, frames: Sequence[np.ndarray]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{kind}:{len(frames)}:{frames[0].shape}".encode())
    for f in frames:
        digest.update(f.data)
    return digest.hexdigest()
