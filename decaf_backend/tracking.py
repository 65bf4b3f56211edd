"""DecAF's SAM2 stage (spec §9): point prompts → key-frame tracklets → AC score → full-video propagation.

Works over the small `VideoPredictor` protocol below, so the orchestration can be tested with a fake and
never imports sam2 or transformers. Reference quirks kept on purpose (spec §9.1, §13): NMS appends a
candidate and suppresses its overlaps before checking it against old tracklets; deletions recorded before
a drop stay; deletion indices may repeat; final selection is strict `>` with a first-max fallback.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .confidence import ConfidenceRecorder
from .config import DecafConfig
from .types import FrameMasks

FIRST_OBJECT_ID = 100  # reference object ids: 100, 101, ... per prompt round
AC_EPS = 1e-8
IOU_CHUNK_PIXELS = 1 << 18  # float32 block of N x 256K pixels per product; counts stay exact (< 2**24)


class VideoPredictor(Protocol):
    """The SAM2 video-predictor calls DecAF makes (Meta's API plus the predicted IoU of the clicked object)."""

    def init_state(self, frames: Sequence[np.ndarray]) -> Any: ...

    def reset_state(self, state: Any) -> None: ...

    def add_new_points_or_box(
        self,
        state: Any,
        frame_idx: int,
        obj_id: int,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        normalize_coords: bool = False,
    ) -> tuple[int, Sequence[int], Any, Any]:
        """Returns (frame_idx, obj_ids, logits (n_obj, 1, H, W), predicted IoU (1,))."""
        ...

    def add_new_mask(
        self, state: Any, frame_idx: int, obj_id: int, mask: np.ndarray
    ) -> tuple[int, Sequence[int], Any]: ...

    def propagate_in_video(
        self, state: Any, start_frame_idx: int, max_frame_num_to_track: int, reverse: bool = False
    ) -> Iterator[tuple[int, Sequence[int], Any]]: ...


# --------------------------------------------------------------------------------------------- masks


def binarize_logits(logits: Any) -> np.ndarray:
    """(n_obj, 1, H, W) logits (torch or numpy) → (n_obj, H, W) bool, thresholded on the device first.

    `sigmoid > 0.5` as the reference does: unlike `logit > 0` it is False for tiny positive float32 logits.
    """
    tensor = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    binary = (torch.sigmoid(tensor) > 0.5).cpu().numpy()
    return binary.reshape(-1, *binary.shape[-2:])


def mask_iou_matrix(masks: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """Pairwise IoU (N, M) float32 of binary masks (N, H, W) and (M, H, W) (default: masks with themselves).

    Intersections are matrix products of the flattened masks (inter = A·Bᵀ, union = |a| + |b| − inter),
    taken over pixel chunks so the float32 copies stay small and every partial count is an exact integer
    (< 2**24). The ratio is taken in float32 like the reference's `inter.float().sum() / union.float().sum()`.
    An empty union gives 0.
    """
    a = _flat(masks)
    b = a if others is None else _flat(others)
    inter = np.zeros((a.shape[0], b.shape[0]), dtype=np.int64)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return inter.astype(np.float32)
    for start in range(0, a.shape[1], IOU_CHUNK_PIXELS):
        block_a = a[:, start : start + IOU_CHUNK_PIXELS].astype(np.float32)
        block_b = block_a if others is None else b[:, start : start + IOU_CHUNK_PIXELS].astype(np.float32)
        inter += np.rint(block_a @ block_b.T).astype(np.int64)
    union = a.sum(1, dtype=np.int64)[:, None] + b.sum(1, dtype=np.int64)[None, :] - inter
    iou = np.zeros(inter.shape, dtype=np.float32)
    np.divide(inter.astype(np.float32), union.astype(np.float32), out=iou, where=union > 0)
    return iou


def _flat(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    return masks.reshape(masks.shape[0], int(np.prod(masks.shape[1:]))) > 0


def nms_with_tracklets(
    masks: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.7,
    prev_masks: np.ndarray | None = None,
    prev_scores: np.ndarray | None = None,
) -> tuple[list[int], list[int]]:
    """Greedy mask NMS of one frame's candidates, also against previous tracklets (spec §9.1 step 3).

    Returns (keep: candidate indices by descending score, delete_prev: indices of previous tracklets to
    delete, in the order they were marked; duplicates possible, as in the reference).
    """
    scores = np.asarray(scores)
    prev_scores = None if prev_scores is None else np.asarray(prev_scores)
    n = len(scores)
    num_prev = 0 if prev_masks is None else len(prev_masks)
    pairwise = mask_iou_matrix(masks)
    vs_prev = mask_iou_matrix(masks, prev_masks) if num_prev else np.zeros((n, 0))
    threshold = np.float32(iou_threshold)  # the reference compares float32 tensors with the threshold
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    delete_prev: list[int] = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        # the reference suppresses overlaps *before* the old-tracklet check, even if i is then dropped
        later = order[pos + 1 :]
        suppressed[later[pairwise[i, later] > threshold]] = True
        for m in range(num_prev):
            if vs_prev[i, m] > threshold:
                if scores[i] > prev_scores[m]:
                    delete_prev.append(m)
                else:
                    keep.pop()
                    break
    return keep, delete_prev


# --------------------------------------------------------------------------------------------- AC score


def _ac_grid(fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid score G (T, h, w) and denominator of spec §9.2 from the fused map."""
    fg = fused > fused.mean(dim=(1, 2), keepdim=True)
    den = fused[fg].sum()  # summed over the selected cells only, as the reference (float summation order)
    frame_max = (fused * fg).amax(dim=(1, 2), keepdim=True)
    grid = torch.where(fg, fused, -frame_max)
    return grid, den


def _pool_mask(mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Covered fraction per grid cell, exactly PyTorch's adaptive average pooling, one frame at a time."""
    pooled = [
        F.adaptive_avg_pool2d(torch.from_numpy(np.asarray(m, dtype=np.float32))[None], size)[0] for m in mask
    ]
    return torch.stack(pooled)


def ac_scores(fused: np.ndarray, tracklet_masks: Iterable[np.ndarray]) -> np.ndarray:
    """Attention-consistency scores (K,) float32 of tracklet masks (each (T, H0, W0)) against `fused` (T, h, w).

    Positive scores are rescaled by the largest positive one (+1e-8); others stay as they are.
    `tracklet_masks` may be a generator so that only one tracklet is unpacked at a time.
    """
    fused_t = torch.as_tensor(np.asarray(fused, dtype=np.float32))
    grid, den = _ac_grid(fused_t)
    size = (fused_t.shape[1], fused_t.shape[2])
    scores = [(_pool_mask(m, size) * grid).sum() / (den + AC_EPS) for m in tracklet_masks]
    if not scores:
        return np.zeros(0, dtype=np.float32)
    ac = torch.stack(scores)
    positive = ac > 0
    if positive.any():
        ac[positive] = ac[positive] / (ac[positive].max() + AC_EPS)
    return ac.numpy().astype(np.float32)


def select_final_prompts(
    tracklet_scores: np.ndarray, ac: np.ndarray, threshold: float = 0.8
) -> tuple[np.ndarray, list[int]]:
    """Final scores (score + AC) / 3 (float32) and the chosen tracklets (spec §9.3).

    Every tracklet with final score strictly above `threshold`; if none, the first one with the largest score.
    """
    final = (
        torch.as_tensor(np.asarray(tracklet_scores, np.float32)) + torch.as_tensor(np.asarray(ac, np.float32))
    ) / 3
    final_np = final.numpy()
    if final_np.size == 0:
        return final_np, []
    chosen = [int(k) for k in np.flatnonzero(final_np > np.float32(threshold))]  # float32 compare, as torch
    return final_np, chosen or [int(np.argmax(final_np))]


# --------------------------------------------------------------------------------------------- stage A


@dataclass
class Tracklet:
    """A stage-A tracklet: a mask on each key frame (bit-packed to keep many tracklets cheap), its score
    (predicted IoU + attention value) and the key frame it came from."""

    packed: np.ndarray  # (T, ceil(H*W/8)) uint8
    height: int
    width: int
    score: np.float32
    frame: int

    def mask(self, t: int) -> np.ndarray:
        bits = np.unpackbits(self.packed[t], count=self.height * self.width)
        return bits.reshape(self.height, self.width).astype(bool)

    def masks(self) -> np.ndarray:
        """(T, H, W) bool."""
        bits = np.unpackbits(self.packed, axis=1, count=self.height * self.width)
        return bits.reshape(-1, self.height, self.width).astype(bool)


@dataclass
class StageAResult:
    tracklets: list[Tracklet]
    nms_log: list[dict[str, Any]] = field(default_factory=list)


def _propagate_into(
    predictor: VideoPredictor,
    state: Any,
    start: int,
    max_frames: int,
    reverse: bool,
    sink: Any,
    propagate: Any = None,
) -> None:
    """Run one propagation and hand each frame's (frame, obj_ids, bool masks (n_obj, H, W)) to `sink`."""
    for f, obj_ids, logits in (propagate or predictor.propagate_in_video)(state, start, max_frames, reverse):
        sink(int(f), [int(o) for o in obj_ids], binarize_logits(logits))


def track_both_ways(
    predictor: VideoPredictor, state: Any, frame: int, num_frames: int, sink: Any, together: bool = False
) -> None:
    """Forward from `frame` to the end, then backward from frame−1 to 0 in the same state (reference order).

    together: track all objects in one batch per frame when the predictor can (`propagate_together`).
    """
    propagate = getattr(predictor, "propagate_together", None) if together else None
    _propagate_into(predictor, state, frame, num_frames - frame, False, sink, propagate)
    if frame > 0:
        _propagate_into(predictor, state, frame - 1, frame, True, sink, propagate)


def run_stage_a(
    predictor: VideoPredictor,
    key_frames: Sequence[np.ndarray],
    points: Sequence[Any],
    iou_threshold: float = 0.7,
    batch_objects: bool = True,
) -> StageAResult:
    """Per-key-frame tracklets on a state built from the key frames only (spec §9.1).

    `points[t]` is None or has `points_xy` (N, 2) normalised (x, y) and `values` (N,) (the fused map there).
    batch_objects: when the predictor can (`add_point_objects`, `propagate_together`), a key frame's
    candidates are added in one batched call and the kept masks tracked in one batch, with the outputs of
    the reference's object-by-object calls; False makes those calls one by one.
    """
    num_t = len(key_frames)
    state = predictor.init_state(key_frames)
    tracklets: list[Tracklet] = []
    log: list[dict[str, Any]] = []
    for t in range(num_t):
        predictor.reset_state(state)
        fp = points[t] if t < len(points) else None
        if fp is None or len(fp.points_xy) == 0:
            continue
        xy = np.asarray(fp.points_xy, dtype=np.float32).reshape(-1, 2)
        logits, ious = _add_candidates(predictor, state, t, xy, batch_objects)
        masks = binarize_logits(logits)  # every object as seen on frame t after the last click
        scores = ious + np.asarray(fp.values, np.float32).reshape(-1)
        prev_masks = np.stack([tr.mask(t) for tr in tracklets]) if tracklets else None
        prev_scores = np.asarray([tr.score for tr in tracklets], np.float32)
        keep, delete_prev = nms_with_tracklets(masks, scores, iou_threshold, prev_masks, prev_scores)
        log.append(
            {
                "frame": t,
                "scores": scores.tolist(),
                "num_previous": len(tracklets),
                "keep": keep,
                "delete_previous": delete_prev,
            }
        )
        if not keep:
            continue
        new = _track_kept_masks(predictor, state, t, num_t, masks[keep], batch_objects)
        dropped = set(delete_prev)
        tracklets = [tr for m, tr in enumerate(tracklets) if m not in dropped]
        height, width = masks.shape[1:]
        tracklets += [Tracklet(p, height, width, scores[k], t) for p, k in zip(new, keep)]
    return StageAResult(tracklets, log)


def _add_candidates(
    predictor: VideoPredictor, state: Any, t: int, xy: np.ndarray, batch_objects: bool
) -> tuple[Any, np.ndarray]:
    """Each point as a new object with one positive click on key frame t -> (logits of every object on
    frame t after the last click, predicted IoU per object (N,) float32)."""
    obj_ids = [FIRST_OBJECT_ID + k for k in range(len(xy))]
    add_all = getattr(predictor, "add_point_objects", None) if batch_objects else None
    if add_all is not None:
        _, _, logits, iou = add_all(state, t, obj_ids, xy, np.ones(len(xy), dtype=np.int32))
        return logits, np.asarray(_numpy32(iou)).reshape(-1)
    ious = []
    logits = None
    for k, obj_id in enumerate(obj_ids):
        _, _, logits, iou = predictor.add_new_points_or_box(
            state, t, obj_id, points=xy[k : k + 1], labels=np.ones(1, dtype=np.int32), normalize_coords=False
        )
        ious.append(_scalar32(iou))
    return logits, np.asarray(ious, np.float32)


def _track_kept_masks(
    predictor: VideoPredictor, state: Any, t: int, num_t: int, kept: np.ndarray, together: bool = False
) -> list[np.ndarray]:
    """Re-seed the state with the kept masks on key frame t and track them over all key frames (packed)."""
    predictor.reset_state(state)
    slot = {}
    for i, mask in enumerate(kept):
        slot[FIRST_OBJECT_ID + i] = i
        predictor.add_new_mask(state, t, FIRST_OBJECT_ID + i, mask)
    n_bytes = (kept.shape[1] * kept.shape[2] + 7) // 8
    packed = np.zeros((len(kept), num_t, n_bytes), dtype=np.uint8)

    def sink(f: int, obj_ids: list[int], binary: np.ndarray) -> None:
        for row, obj in enumerate(obj_ids):
            if obj in slot:
                packed[slot[obj], f] = np.packbits(binary[row].reshape(-1))

    track_both_ways(predictor, state, t, num_t, sink, together)
    return [p.copy() for p in packed]  # separate buffers: a deleted tracklet frees its own memory


def _numpy32(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _scalar32(value: Any) -> np.float32:
    return np.float32(_numpy32(value).reshape(-1)[0])


# --------------------------------------------------------------------------------------------- stage B


def run_stage_b(
    predictor: VideoPredictor,
    all_frames: Sequence[np.ndarray],
    prompt_frames: Sequence[int],
    prompt_masks: Sequence[np.ndarray],
    confidence: ConfidenceRecorder | None = None,
) -> FrameMasks:
    """Propagate the selected prompt masks over the whole video (spec §9.4); the union of all objects.

    Masks are grouped by video frame in first-appearance order; each group gets a fresh state (reset),
    is tracked forward then backward, and ORed into compressed per-frame masks. `confidence` records SAM2's
    per-frame signals on the way.
    """
    num_frames = len(all_frames)
    if len(prompt_masks):
        height, width = np.asarray(prompt_masks[0]).shape[-2:]
    else:
        height, width = np.asarray(all_frames[0]).shape[:2]
    out = FrameMasks(num_frames, int(height), int(width))
    groups: dict[int, list[np.ndarray]] = {}
    for f, m in zip(prompt_frames, prompt_masks):
        groups.setdefault(int(f), []).append(np.asarray(m) > 0)
    if not groups:
        return out
    state = predictor.init_state(all_frames)
    forget = getattr(predictor, "forget_tracking_history", None)
    if forget is not None:  # stage B states are never corrected: old per-frame memories may go
        forget(state)

    def sink(f: int, obj_ids: list[int], binary: np.ndarray) -> None:
        if binary.shape[0]:
            out.union(f, binary.any(axis=0))
        if confidence is not None:
            confidence.record(state, f, obj_ids, binary)

    for frame, masks in groups.items():
        predictor.reset_state(state)
        for i, mask in enumerate(masks):
            predictor.add_new_mask(state, frame, FIRST_OBJECT_ID + i, mask)
        track_both_ways(predictor, state, frame, num_frames, sink)
    return out


# --------------------------------------------------------------------------------------------- entry point


@dataclass
class TrackingResult:
    """Everything the SAM2 stage produced; `final_masks` covers every video frame."""

    tracklets: list[Tracklet]
    tracklet_scores: np.ndarray  # (K,) float32
    tracklet_frame_idx: np.ndarray  # (K,) int64 key-frame index of each tracklet's source
    ac_scores: np.ndarray  # (K,) float32
    final_scores: np.ndarray  # (K,) float32
    chosen: list[int]  # selected tracklet indices, in output order
    selected_video_frame_indices: np.ndarray  # (S,) int64
    selected_masks: np.ndarray  # (S, H, W) bool
    final_masks: FrameMasks
    nms_log: list[dict[str, Any]] = field(default_factory=list)
    frame_confidence: list[float] | None = None  # per video frame, from SAM2's signals in stage B

    @property
    def tracklet_masks(self) -> np.ndarray:
        """(K, T, H, W) bool; unpacks everything, so only for short key-frame sets (tests, debugging)."""
        if not self.tracklets:
            return np.zeros((0, 0, self.final_masks.height, self.final_masks.width), dtype=bool)
        return np.stack([tr.masks() for tr in self.tracklets])


def segment_with_points(
    predictor: VideoPredictor,
    key_frames: Sequence[np.ndarray],
    all_frames: Sequence[np.ndarray],
    key_frame_indices: Sequence[int],
    fused: np.ndarray,
    points: Sequence[Any],
    config: DecafConfig | None = None,
) -> TrackingResult:
    """DecAF's dense masks from point prompts: stage A → AC score → selection → stage B (spec §9).

    With no points at all (only when the fused map is constant) every frame's mask is empty; the
    predictor is not called.
    """
    config = config or DecafConfig()
    if not any(fp is not None and len(fp.points_xy) for fp in points):
        frame0 = np.asarray(key_frames[0] if len(key_frames) else all_frames[0])
        return _empty_result(FrameMasks(len(all_frames), frame0.shape[0], frame0.shape[1]))

    stage_a = run_stage_a(predictor, key_frames, points, config.nms_iou_threshold)
    tracklets = stage_a.tracklets
    scores = np.asarray([tr.score for tr in tracklets], dtype=np.float32)
    frames = np.asarray([tr.frame for tr in tracklets], dtype=np.int64)
    ac = ac_scores(fused, (tr.masks() for tr in tracklets))
    final, chosen = select_final_prompts(scores, ac, config.final_score_threshold)
    video_idx = np.asarray([int(key_frame_indices[frames[k]]) for k in chosen], dtype=np.int64)
    prompt_masks = [tracklets[k].mask(int(frames[k])) for k in chosen]
    recorder = ConfidenceRecorder(predictor, len(all_frames))
    final_masks = run_stage_b(predictor, all_frames, video_idx, prompt_masks, recorder)
    height, width = final_masks.height, final_masks.width
    selected = np.stack(prompt_masks) if prompt_masks else np.zeros((0, height, width), dtype=bool)
    return TrackingResult(
        tracklets,
        scores,
        frames,
        ac,
        final,
        chosen,
        video_idx,
        selected,
        final_masks,
        stage_a.nms_log,
        recorder.result(),
    )


def _empty_result(final_masks: FrameMasks) -> TrackingResult:
    h, w = final_masks.height, final_masks.width
    empty_f = np.zeros(0, dtype=np.float32)
    return TrackingResult(
        [],
        empty_f,
        np.zeros(0, np.int64),
        empty_f,
        empty_f,
        [],
        np.zeros(0, np.int64),
        np.zeros((0, h, w), bool),
        final_masks,
    )
