"""SAM2's own per-frame signals: the object score logit and the predicted IoU of each object's mask.

sam2 computes both for every object on every frame it decodes, keeps only the object score (in its per-frame
outputs) and drops the IoU. `FrameSignals` wraps the model's `_track_step` (the one call per object and frame,
for clicks, mask prompts and propagation alike) to keep both, so that `confidence.py` can say per frame how
sure SAM2 was. A mask given as a prompt comes back with sam2's own values for it: IoU 1 and a ±10 object score.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch

STATE_KEY = "decaf_frame_signals"  # state[STATE_KEY][obj_id][frame] = (object score logit, predicted IoU)


class FrameSignals:
    """Records (frame, predicted IoU, object score logit) of each `_track_step` call until taken."""

    def __init__(self, model: Any) -> None:
        self._calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        inner = model._track_step

        @functools.wraps(inner)
        def track_step(frame_idx: int, *args: Any, **kwargs: Any) -> Any:
            out = inner(frame_idx, *args, **kwargs)
            sam_outputs = out[
                1
            ]  # (low-res multimasks, high-res multimasks, ious (B, M), ..., object scores (B, 1))
            ious, scores = sam_outputs[2], sam_outputs[6]
            # the decoder keeps its best-IoU mask among the multimask outputs, as `_IoURecorder` reads it
            self._calls.append((int(frame_idx), ious.detach().float().amax(dim=-1), scores.detach().float()))
            return out

        model._track_step = track_step

    def clear(self) -> None:
        self._calls.clear()

    def take(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        calls, self._calls = self._calls, []
        return calls

    def store_prompt(self, state: dict[str, Any], obj_id: int) -> None:
        """After a click/box/mask prompt of `obj_id`: its frame's signals are the prompt's."""
        for frame, iou, score in self.take():
            _put(state, obj_id, frame, iou, score)

    def store_step(self, state: dict[str, Any], frame: int, obj_ids: Iterable[int]) -> None:
        """After one propagation step: sam2 decoded, in object order, each object not prompted on `frame`
        (a prompted one keeps the signals of its prompt)."""
        calls = [c for c in self.take() if c[0] == frame]
        outputs = state["output_dict_per_obj"]
        decoded = [o for i, o in enumerate(obj_ids) if frame not in outputs[i]["cond_frame_outputs"]]
        if len(calls) != len(decoded):  # not the sam2 loop this was written for: record nothing wrong
            return
        for obj_id, (_, iou, score) in zip(decoded, calls):
            _put(state, obj_id, frame, iou, score)


def _put(state: dict[str, Any], obj_id: int, frame: int, iou: torch.Tensor, score: torch.Tensor) -> None:
    per_obj = state.setdefault(STATE_KEY, {}).setdefault(int(obj_id), {})
    per_obj[int(frame)] = (float(score.reshape(-1)[0]), float(iou.reshape(-1)[0]))


def frame_signals(state: dict[str, Any], frame: int) -> dict[int, tuple[float, float]]:
    """{obj_id: (object score logit, predicted IoU)} of the objects SAM2 has signals for on `frame`."""
    return {
        obj_id: per_frame[frame]
        for obj_id, per_frame in (state.get(STATE_KEY) or {}).items()
        if frame in per_frame
    }


def forget_signals(state: dict[str, Any]) -> None:
    state.pop(STATE_KEY, None)
