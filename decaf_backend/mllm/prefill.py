"""What the LLaVA-OneVision, InternVL3 and Qwen3-VL adapters share (spec §2, §4, §10, §14.4).

A family adapter says how key frames become encoder outputs, how the chat template's visual placeholder
expands into tokens, what the model's forward needs to take the cached encoder outputs, and how a
prompt's visual tokens map onto its (t, h, w) grid. This base runs the rest the same way for all: one
prefill per batch of prompts with post-RoPE Q/K captured on the rollout layers only, the blockwise
rollout from Q/K, greedy answers reusing the prefill for object prompts, prefill only for background
prompts, and one vision encoding per pixel content shared by object and background prompts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import DecafError
from ..rollout import rollout_last_row_from_qk
from ..types import AttentionResult
from . import prompts
from .calls import DecafCalls, check_frames

__all__ = ["EncodedVisual", "PrefillAdapter", "check_frames"]


@dataclass
class EncodedVisual:
    """One visual input encoded once: `items` prompts (1 for the clip, T for frame level)."""

    kind: str  # "video" (one prompt for the clip) or "image" (one prompt per key frame)
    items: int
    features: Any  # what the family's `_model_inputs` slices per batch
    map_shape: tuple[int, int, int]  # (t, h, w) of one prompt's map
    grid_thw: np.ndarray  # reported grid (the reference's convention per family)
    layout: dict[str, Any] = field(default_factory=dict)  # family extras (tiling, token counts)


class PrefillAdapter(DecafCalls):
    """`MLLMAdapter` machinery; subclasses implement the hooks at the end of the class."""

    system_prompt: str | None = None  # the system turn the reference writes (None: the template's own)
    # head weights over the exact visual positions (InternVL reference) instead of the first-to-last span
    exact_visual_positions: bool = False

    # ----- building blocks (public for tests) -----

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

    # ----- internals -----

    def _prefills(
        self, visual: EncodedVisual, ids_one: torch.Tensor, generate: bool
    ) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor], list[str]]]:
        # frame prompts share one length (same frame size, same text): batches need no padding (§13)
        step = visual.items if visual.kind == "video" else max(1, int(self.config.frame_batch_size))
        for start in range(0, visual.items, step):
            stop = min(visual.items, start + step)
            ids = ids_one.expand(stop - start, -1).to(self.device)
            inputs = self._model_inputs(ids, visual, start, stop)
            # the language model only: vision towers (SigLIP, InternViT) have q/k projections too
            yield self._prefill_batch(inputs, ids.shape[1], generate, self.model.model.language_model)

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

    def _tokens_per_item(self, visual: EncodedVisual) -> int:
        t, h, w = visual.map_shape
        return t * h * w

    # ----- family hooks -----

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
