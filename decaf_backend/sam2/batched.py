"""Many SAM2 objects in one batch: DecAF's stage A adds dozens of one-click objects on a key frame and
tracks the survivors over the key frames (spec §9.1, §14.4).

sam2's video predictor runs every object alone (batch 1): N clicks cost N decoder calls, and each
propagated frame costs one memory-attention, decoder and memory-encoder pass per object. Every operation
in those passes works per batch item, so objects that start on the same frame and are tracked over the
same frames can run as one batch: the outputs are the ones sam2 gives object by object (checked bit for
bit by tests/test_stage_a_batched.py). The state keeps sam2's per-object layout, so any later sam2 call
on it works as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import PromptError

_KINDS = ("cond_frame_outputs", "non_cond_frame_outputs")


def _row(out: dict[str, Any], row: int) -> dict[str, Any]:
    """Object `row` of a batched frame output, as views (no copy)."""

    def pick(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[row : row + 1]
        if isinstance(value, list):
            return [pick(v) for v in value]
        return value

    return {key: pick(value) for key, value in out.items()}


def _stack(outs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-object frame outputs (batch 1 each) as one batched output."""

    def cat(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, torch.Tensor):
            return torch.cat(values)
        if isinstance(first, list):
            return [cat([v[i] for v in values]) for i in range(len(first))]
        return first

    return {key: cat([o[key] for o in outs]) for key in outs[0]}


@torch.inference_mode()
def add_point_objects(
    model: Any,
    state: dict[str, Any],
    frame_idx: int,
    obj_ids: Sequence[int],
    points: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """New objects, object i prompted by points[i] (P, 2) in model pixels with labels[i] (P,), on one
    frame, in one decoder call; sam2's `add_new_points_or_box` per object, in this order, does the same.

    Returns every object's logits on the frame at video resolution (n_obj, 1, H, W), as sam2's last call
    would.
    """
    known = [o for o in obj_ids if o in state["obj_id_to_idx"]]
    if known:
        raise PromptError(f"objects {known} already exist: a batch only adds new objects")
    if len(set(obj_ids)) != len(obj_ids):
        raise PromptError("object ids of one batch must differ")
    indices = [model._obj_id_to_idx(state, o) for o in obj_ids]
    device = state["device"]
    coords, labels = points.to(device), labels.to(device)
    out, _ = model._run_single_frame_inference(
        inference_state=state,
        output_dict={kind: {} for kind in _KINDS},  # a new object reads no memory on its first frame
        frame_idx=frame_idx,
        batch_size=len(indices),
        is_init_cond_frame=True,
        point_inputs={"point_coords": coords, "point_labels": labels},
        mask_inputs=None,
        reverse=False,
        run_mem_encoder=False,  # sam2 encodes memories when propagation starts
        prev_sam_mask_logits=None,
    )
    for row, idx in enumerate(indices):
        state["point_inputs_per_obj"][idx][frame_idx] = {
            "point_coords": coords[row : row + 1],
            "point_labels": labels[row : row + 1],
        }
        state["mask_inputs_per_obj"][idx].pop(frame_idx, None)
        state["temp_output_dict_per_obj"][idx]["cond_frame_outputs"][frame_idx] = _row(out, row)
    consolidated = model._consolidate_temp_output_across_obj(
        state, frame_idx, is_cond=True, consolidate_at_video_res=True
    )
    _, video_res_masks = model._get_orig_video_res_output(state, consolidated["pred_masks_video_res"])
    return video_res_masks


def can_propagate_together(model: Any, state: dict[str, Any]) -> bool:
    """True when every object has the same prompted and tracked frames (then one batch tracks them all)."""
    if model.clear_non_cond_mem_around_input:  # sam2 would clear memories object by object
        return False
    outputs = list(state["output_dict_per_obj"].values())
    temps = list(state["temp_output_dict_per_obj"].values())
    if not outputs:
        return False

    def frames(d: dict[str, Any]) -> tuple[frozenset, frozenset]:
        return frozenset(d[_KINDS[0]]), frozenset(d[_KINDS[1]])

    return all(frames(o) == frames(outputs[0]) for o in outputs) and all(
        frames(t) == frames(temps[0]) for t in temps
    )


@torch.inference_mode()
def propagate_together(
    model: Any, state: dict[str, Any], start_frame_idx: int, max_frame_num_to_track: int, reverse: bool
) -> Iterator[tuple[int, list[int], torch.Tensor]]:
    """sam2's `propagate_in_video` with all objects in one batch per frame (same frames, same outputs).

    Needs `can_propagate_together(model, state)`. Yields (frame_idx, obj_ids, video-resolution logits).
    """
    model.propagate_in_video_preflight(state)
    obj_ids = list(state["obj_ids"])
    per_object = [state["output_dict_per_obj"][i] for i in range(len(obj_ids))]
    batched = {
        kind: {f: _stack([o[kind][f] for o in per_object]) for f in per_object[0][kind]} for kind in _KINDS
    }
    num_frames = int(state["num_frames"])
    if reverse:
        end = max(start_frame_idx - max_frame_num_to_track, 0)
        order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
    else:
        end = min(start_frame_idx + max_frame_num_to_track, num_frames - 1)
        order = range(start_frame_idx, end + 1)
    for frame_idx in order:
        if frame_idx in batched[_KINDS[0]]:
            pred_masks = batched[_KINDS[0]][frame_idx]["pred_masks"].to(state["device"])
        else:
            out, pred_masks = model._run_single_frame_inference(
                inference_state=state,
                output_dict=batched,
                frame_idx=frame_idx,
                batch_size=len(obj_ids),
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=reverse,
                run_mem_encoder=True,
            )
            batched[_KINDS[1]][frame_idx] = out
            for row, outputs in enumerate(per_object):
                outputs[_KINDS[1]][frame_idx] = _row(out, row)
        for idx in range(len(obj_ids)):
            state["frames_tracked_per_obj"][idx][frame_idx] = {"reverse": reverse}
        _, video_res_masks = model._get_orig_video_res_output(state, pred_masks)
        yield frame_idx, obj_ids, video_res_masks
