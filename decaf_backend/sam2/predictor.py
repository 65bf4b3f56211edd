"""`Sam2VideoPredictor`: tracking.VideoPredictor over Meta's stateful sam2 video predictor (spec §9).

Meta's API plus the predicted IoU of the mask SAM2 keeps for a click (what the DecAF reference adds), fed
with in-memory frames (`frames.Sam2Frames`), quiet and CPU-capable through `patches`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import PromptError, PromptOutOfRangeError
from . import batched
from .frames import FeatureCachingState, Sam2Frames
from .patches import install_sam2_patches
from .signals import FrameSignals, forget_signals, frame_signals

# above this many frames, per-frame memories live in CPU RAM (about 0.8 MB per frame and object)
OFFLOAD_STATE_FRAMES = 1000
# A state over at most this many frames (DecAF's key frames) keeps every frame's image features: stage A
# propagates over the key frames once per prompted key frame, and sam2 itself caches only the last frame,
# so without this the image encoder would run O(T²) times instead of T (spec §14.4).
FEATURE_CACHE_FRAMES = 16

_FORGET_HISTORY = "decaf_forget_history"


class _IoURecorder:
    """Keeps the predicted IoU of the mask SAM2's decoder chose in its last call (max over the multimask
    outputs: SAM2 keeps the argmax), by wrapping the model's `_forward_sam_heads`."""

    def __init__(self, model: Any) -> None:
        self.last: torch.Tensor | None = None
        inner = model._forward_sam_heads

        @functools.wraps(inner)
        def forward_sam_heads(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            self.last = out[2].detach().float().max(dim=-1).values  # ious (B, M) -> (B,)
            return out

        model._forward_sam_heads = forward_sam_heads


def _inputs_to_float32(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def cast(value: Any) -> Any:
        return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


class Sam2VideoPredictor:
    """tracking.VideoPredictor over a sam2 `SAM2VideoPredictor` model.

    Differences from Meta's API, all on purpose: `init_state` takes frames (HxWx3 uint8 sequence); points
    are normalised (x, y) unless `normalize_coords=True` (pixels), as DecAF passes them; a click call also
    returns the predicted IoU (1,); clicks accumulate on a frame (SAM2 demo semantics) unless a box comes
    with them; returned logits are float32 CPU tensors at video resolution. The model runs under autocast
    when `dtype` is bf16/fp16 (weights stay fp32, as in sam2's own demos).
    """

    def __init__(
        self,
        model: Any,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        name: str = "",
        random_weights: bool = False,
        image_cache_size: int = 16,
    ) -> None:
        install_sam2_patches()
        self.model = model
        self.device = torch.device(device) if device is not None else torch.device(model.device)
        self.dtype = None if dtype in (None, torch.float32) else dtype
        self.name = name
        self.random_weights = random_weights
        self.image_size = int(model.image_size)
        self.image_cache_size = image_cache_size
        self._iou = _IoURecorder(model)
        self._signals = FrameSignals(model)
        self._lock = threading.RLock()
        if self.dtype is None:
            # sam2 always stores memory features in bf16; without autocast (fp32 runs, CPU) memory attention
            # would then mix bf16 inputs with fp32 weights whenever no fp32 object pointer joins the memory
            model.memory_attention.register_forward_pre_hook(_inputs_to_float32, with_kwargs=True)

    def __repr__(self) -> str:
        dtype = str(self.dtype).replace("torch.", "") if self.dtype else "float32"
        return f"Sam2VideoPredictor({self.name!r}, {self.image_size}px, {self.device}, {dtype})"

    def _context(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    # -- protocol -------------------------------------------------------------------------------------
    def init_state(
        self, frames: Sequence[np.ndarray], offload_state_to_cpu: bool | None = None
    ) -> dict[str, Any]:
        """A SAM2 inference state over `frames` (len() and [i]); frames are read lazily by SAM2.

        offload_state_to_cpu: keep per-frame memories in CPU RAM (None: when there are more than
        OFFLOAD_STATE_FRAMES frames and the model is on a GPU).
        """
        images = Sam2Frames(frames, self.image_size, self.image_cache_size)
        if offload_state_to_cpu is None:
            offload_state_to_cpu = self.device.type != "cpu" and len(images) > OFFLOAD_STATE_FRAMES
        with self._lock, self._context():
            state = self.model.init_state(
                images, offload_video_to_cpu=True, offload_state_to_cpu=offload_state_to_cpu
            )
        capacity = len(images) if len(images) <= FEATURE_CACHE_FRAMES else 1
        return FeatureCachingState(state, capacity)

    def reset_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.model.reset_state(state)
            forget_signals(state)

    def add_new_points_or_box(
        self,
        state: dict[str, Any],
        frame_idx: int,
        obj_id: int,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        normalize_coords: bool = False,
        clear_old_points: bool | None = None,
    ) -> tuple[int, list[int], torch.Tensor, torch.Tensor]:
        """Clicks (labels 1 positive / 0 negative; all positive when labels is None) and/or a box
        (x0, y0, x1, y1) for one object on one frame -> (frame_idx, obj_ids, logits (n_obj, 1, H, W), iou (1,)).

        On a frame SAM2 already tracked for this object the prompts refine that mask. clear_old_points
        (default: only when a box is given, as SAM2 requires) drops this frame's earlier clicks first.
        """
        frame_idx = self._frame(state, frame_idx)
        if points is None and box is None:
            raise PromptError("a SAM2 prompt needs points or a box")
        if points is not None:
            points = _np(points).astype(np.float32).reshape(-1, 2)
            labels = (
                np.ones(len(points), np.int32) if labels is None else _np(labels).astype(np.int32).reshape(-1)
            )
            if len(labels) != len(points):
                raise PromptError(f"{len(points)} points but {len(labels)} labels")
        else:
            labels = None
        if box is not None:
            box = _np(box).astype(np.float32).reshape(4)
        clear = box is not None if clear_old_points is None else bool(clear_old_points)
        with self._lock, self._context():
            self._iou.last = None
            self._signals.clear()
            f, obj_ids, logits = self.model.add_new_points_or_box(
                state,
                frame_idx=frame_idx,
                obj_id=obj_id,
                points=points,
                labels=labels,
                clear_old_points=clear,
                normalize_coords=normalize_coords,
                box=box,
            )
            iou = self._iou.last
            self._signals.store_prompt(state, obj_id)
        iou = torch.full((1,), float("nan")) if iou is None else iou.reshape(-1)[:1].cpu()
        return int(f), list(obj_ids), _logits(logits), iou

    def add_point_objects(
        self,
        state: dict[str, Any],
        frame_idx: int,
        obj_ids: Sequence[int],
        points: Any,
        labels: Any = None,
    ) -> tuple[int, list[int], torch.Tensor, torch.Tensor]:
        """New objects on one frame, object i clicked at points[i] (normalised (x, y); (N, 2) for one click
        each or (N, P, 2)), all in one batched SAM2 call: the outputs of N `add_new_points_or_box` calls in
        a row -> (frame_idx, obj_ids, logits (n_obj, 1, H, W) of every object, predicted IoU (N,))."""
        frame_idx = self._frame(state, frame_idx)
        coords = _np(points).astype(np.float32)
        coords = coords.reshape(len(obj_ids), -1, 2)
        clicks = np.ones(coords.shape[:2], np.int32) if labels is None else _np(labels).astype(np.int32)
        if clicks.size != coords.shape[0] * coords.shape[1]:
            raise PromptError(f"{coords.shape[0] * coords.shape[1]} points but {clicks.size} labels")
        # sam2 scales normalised points by the model's image size (spec §9: x, y times 1024)
        scaled = torch.from_numpy(coords) * self.image_size
        with self._lock, self._context():
            self._iou.last = None
            logits = batched.add_point_objects(
                self.model,
                state,
                frame_idx,
                [int(o) for o in obj_ids],
                scaled,
                torch.from_numpy(clicks.reshape(coords.shape[:2])),
            )
            iou = self._iou.last
        iou = torch.full((len(obj_ids),), float("nan")) if iou is None else iou.reshape(-1).cpu()
        return frame_idx, list(state["obj_ids"]), _logits(logits), iou

    def add_new_mask(
        self, state: dict[str, Any], frame_idx: int, obj_id: int, mask: Any
    ) -> tuple[int, list[int], torch.Tensor]:
        """A binary mask (H, W; > 0.5 is inside) as the object's prompt on a frame."""
        frame_idx = self._frame(state, frame_idx)
        binary = _np(mask) > 0.5
        if binary.ndim == 3 and binary.shape[0] == 1:
            binary = binary[0]
        if binary.ndim != 2:
            raise PromptError(f"a mask prompt must be 2-D (H, W), got shape {binary.shape}")
        with self._lock, self._context():
            self._signals.clear()
            f, obj_ids, logits = self.model.add_new_mask(state, frame_idx, obj_id, torch.from_numpy(binary))
            self._signals.store_prompt(state, obj_id)
        return int(f), list(obj_ids), _logits(logits)

    def propagate_in_video(
        self,
        state: dict[str, Any],
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Meta's propagation: yields (frame_idx, obj_ids, logits (n_obj, 1, H, W)) frame by frame."""
        start_frame_idx, max_frame_num_to_track, skip = _reverse_to_frame_zero(
            state, start_frame_idx, max_frame_num_to_track, reverse
        )
        steps = self.model.propagate_in_video(
            state,
            start_frame_idx=start_frame_idx,
            max_frame_num_to_track=max_frame_num_to_track,
            reverse=reverse,
        )
        for f, obj_ids, logits in self._steps_under_lock(steps, state, skip, keep_signals=True):
            if state.get(_FORGET_HISTORY):
                self._forget_old_frames(state, f, reverse)
            yield f, obj_ids, _logits(logits)

    def propagate_together(
        self,
        state: dict[str, Any],
        start_frame_idx: int,
        max_frame_num_to_track: int,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """`propagate_in_video` with every object in one batch per frame when they share their prompted
        and tracked frames (DecAF's stage A); otherwise object by object, as sam2 does. Same outputs."""
        if not batched.can_propagate_together(self.model, state):
            yield from self.propagate_in_video(state, start_frame_idx, max_frame_num_to_track, reverse)
            return
        start_frame_idx, max_frame_num_to_track, skip = _reverse_to_frame_zero(
            state, start_frame_idx, max_frame_num_to_track, reverse
        )
        steps = batched.propagate_together(
            self.model, state, start_frame_idx, max_frame_num_to_track, reverse
        )
        for f, obj_ids, logits in self._steps_under_lock(steps, state, skip, keep_signals=False):
            yield f, obj_ids, _logits(logits)

    def _steps_under_lock(
        self,
        steps: Iterator[tuple[Any, Any, torch.Tensor]],
        state: dict[str, Any],
        skip: int,
        keep_signals: bool,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Advance a sam2 propagation one frame at a time under the predictor's lock and autocast, and
        leave frame `skip` out. Neither is held across a yield to the caller: autocast is thread-local
        state, and other sessions take their turn on the model between frames."""
        while True:
            with self._lock, self._context():
                if keep_signals:
                    self._signals.clear()
                try:
                    f, obj_ids, logits = next(steps)
                except StopIteration:
                    return
                except RuntimeError as exc:
                    if "No input points or masks" in str(exc):
                        raise PromptError("nothing to propagate: add points, a box or a mask first") from exc
                    raise
                if keep_signals:
                    self._signals.store_step(state, int(f), obj_ids)
            if int(f) != skip:
                yield int(f), list(obj_ids), logits

    def forget_tracking_history(self, state: dict[str, Any]) -> None:
        """Let propagation drop per-frame memories it will not read again (long videos, one-way states).

        sam2 keeps every tracked frame's memory features and masks (about 1 MB a frame at 1024 px), which
        is what exhausts memory on long videos. A frame reads only the last `num_maskmem` memories and
        `max_obj_ptrs_in_encoder` object pointers behind it, plus the conditioning frames, so older outputs
        can go without changing any result. Frames next to a conditioning frame are kept, because the
        backward pass from that frame reads them. Later clicks on a forgotten frame would lose the
        propagated mask as their prior, so only states that are never corrected (DecAF's stage B) use this.
        """
        state[_FORGET_HISTORY] = True

    def _forget_old_frames(self, state: dict[str, Any], frame_idx: int, reverse: bool) -> None:
        reach = max(int(self.model.num_maskmem), int(self.model.max_obj_ptrs_in_encoder)) + 1
        old = frame_idx + reach if reverse else frame_idx - reach
        for outputs in state["output_dict_per_obj"].values():
            if any(abs(old - c) <= reach for c in outputs["cond_frame_outputs"]):
                continue
            outputs["non_cond_frame_outputs"].pop(old, None)

    # -- extras ---------------------------------------------------------------------------------------
    def frame_signals(self, state: dict[str, Any], frame_idx: int) -> dict[int, tuple[float, float]]:
        """SAM2's own signals on a frame it decoded: {obj_id: (object score logit, predicted IoU)}, from the
        object's prompt on a prompted frame, else from the latest propagation (confidence.py maps them)."""
        return frame_signals(state, int(frame_idx))

    def conditioning_frames(self, state: dict[str, Any]) -> list[int]:
        """Frames holding prompts (points, boxes, masks) of any object, sorted."""
        frames: set[int] = set()
        for per_frame in state["point_inputs_per_obj"].values():
            frames.update(per_frame)
        for per_frame in state["mask_inputs_per_obj"].values():
            frames.update(per_frame)
        for outputs in state["output_dict_per_obj"].values():
            frames.update(outputs["cond_frame_outputs"])
        return sorted(int(f) for f in frames)

    def _frame(self, state: dict[str, Any], frame_idx: int) -> int:
        n = int(state["num_frames"])
        if not 0 <= int(frame_idx) < n:
            raise PromptOutOfRangeError(f"frame {frame_idx} is outside the video (0..{n - 1})")
        return int(frame_idx)


def propagate_all(
    predictor: Any, state: Any, start_frame_idx: int | None = None
) -> Iterator[tuple[int, list[int], Any]]:
    """Masks of every frame: forward from the earliest prompted frame to the end, then backward to frame 0
    (the order DecAF and SAM2's demo use). Call again after adding clicks/boxes/masks to re-propagate."""
    num_frames = int(state["num_frames"] if isinstance(state, dict) else state.num_frames)
    if start_frame_idx is None:
        if not hasattr(predictor, "conditioning_frames"):
            raise TypeError(f"{type(predictor).__name__} cannot list prompted frames: pass start_frame_idx")
        frames = predictor.conditioning_frames(state)
        if not frames:
            raise PromptError("nothing to propagate: add points, a box or a mask first")
        start_frame_idx = frames[0]
    yield from predictor.propagate_in_video(state, start_frame_idx, num_frames - start_frame_idx, False)
    if start_frame_idx > 0:
        yield from predictor.propagate_in_video(state, start_frame_idx - 1, start_frame_idx, True)


def _reverse_to_frame_zero(
    state: dict[str, Any], start: int | None, max_frames: int | None, reverse: bool
) -> tuple[int | None, int | None, int | None]:
    """(start, max_frames, frame to leave out) for sam2's propagation.

    sam2 1.1.0 skips a reverse pass that starts at frame 0, so a video first prompted on frame 1 (forward from 1,
    then backward from 0) would leave frame 0 without a mask. When frame 1 is a prompted frame of every object,
    the backward pass starts there instead (its stored output is reused, nothing recomputed) and frame 1 is left
    out of what is yielded."""
    if not reverse or start != 0 or int(state["num_frames"]) < 2 or max_frames == 0:
        return start, max_frames, None
    per_object = state["output_dict_per_obj"].values()
    if per_object and all(1 in outputs["cond_frame_outputs"] for outputs in per_object):
        return 1, 1, 1
    return start, max_frames, None


def _np(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _logits(logits: torch.Tensor) -> torch.Tensor:
    return logits.detach().to(device="cpu", dtype=torch.float32)
