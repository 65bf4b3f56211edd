"""SAM2 video segmentation over Meta's `sam2` package, fed with in-memory frames (spec §9).

`Sam2VideoPredictor` implements tracking.VideoPredictor: Meta's stateful video API plus the predicted IoU of
the mask SAM2 keeps for a click (what the DecAF reference adds). Frames come from any lazy sequence (a
VideoReader) and are resized + normalised only when SAM2 asks for them, so no JPEG folder is written and a
long video is never held as 1024² float tensors. Loading takes hub ids, checkpoints or folders;
`build_tiny_sam2` writes a random-weight model in the same on-disk format for tests.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import DEFAULT_SAM2
from .devices import pick_device, torch_dtype
from .errors import ModelNotFoundError, PromptError, PromptOutOfRangeError, VideoError
from .video import as_rgb

# hub id -> (config inside the sam2 package, checkpoint file of the hub repository); same as sam2.build_sam
HUB_MODELS: dict[str, tuple[str, str]] = {
    "facebook/sam2-hiera-tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt"),
    "facebook/sam2-hiera-small": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt"),
    "facebook/sam2-hiera-base-plus": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt"),
    "facebook/sam2-hiera-large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt"),
    "facebook/sam2.1-hiera-tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
    "facebook/sam2.1-hiera-small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
    "facebook/sam2.1-hiera-base-plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
    "facebook/sam2.1-hiera-large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
}

# The video post-processing of sam2's build_sam2_video_predictor (spec §9), plus corrections that stick:
# a click on an already tracked frame makes it a conditioning frame, so re-propagating keeps the click.
VIDEO_OVERRIDES: dict[str, Any] = {
    "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "model.add_all_frames_to_correct_as_cond": True,
}
POSTPROCESSING_OVERRIDES: dict[str, Any] = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 8,
}

# A 17M-parameter, 256-pixel SAM2.1 for tests (deps.md §3): global attention must avoid q-pool blocks.
TINY_BASE_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY_OVERRIDES: dict[str, Any] = {
    "model.image_size": 256,
    "model.image_encoder.trunk.stages": [1, 1, 2, 1],
    "model.image_encoder.trunk.global_att_blocks": [3],
    "model.memory_attention.num_layers": 1,
    "model.memory_attention.layer.dim_feedforward": 256,
    "model.memory_attention.layer.self_attention.feat_sizes": [16, 16],
    "model.memory_attention.layer.cross_attention.feat_sizes": [16, 16],
    "model.num_maskmem": 3,
}
TINY_CHECKPOINT = "sam2_tiny_random.pt"
TINY_OBJECT_SCORE_BIAS = 10.0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# above this many frames, per-frame memories live in CPU RAM (about 0.8 MB per frame and object)
OFFLOAD_STATE_FRAMES = 1000
# A state over at most this many frames (DecAF's key frames) keeps every frame's image features: stage A
# propagates over the key frames once per prompted key frame, and sam2 itself caches only the last frame,
# so without this the image encoder would run O(T²) times instead of T (spec §14.4).
FEATURE_CACHE_FRAMES = 16


# ------------------------------------------------------------------------------------------------ frames


_FORGET_HISTORY = "decaf_forget_history"


class _FeatureCache(OrderedDict):
    """frame index -> (image, backbone features), least recently used first."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = max(1, capacity)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            self.move_to_end(key)
        return super().get(key, default)


class _FeatureCachingState(dict):
    """A sam2 inference state whose `cached_features` keeps `capacity` frames instead of the last one.

    sam2 replaces `state["cached_features"]` by a one-entry dict after each image encoding; here that
    assignment merges into a bounded LRU. Everything else is the plain sam2 state dict.
    """

    def __init__(self, state: dict[str, Any], capacity: int) -> None:
        super().__init__(state)
        cache = _FeatureCache(capacity)
        cache.update(state.get("cached_features") or {})
        super().__setitem__("cached_features", cache)

    def __setitem__(self, key: str, value: Any) -> None:
        cache = self.get("cached_features")
        if key != "cached_features" or not isinstance(cache, _FeatureCache):
            super().__setitem__(key, value)
            return
        for frame_idx, features in value.items():
            cache[frame_idx] = features
            cache.move_to_end(frame_idx)
        while len(cache) > cache.capacity:
            cache.popitem(last=False)


class Sam2Frames:
    """SAM2's `state["images"]` over a lazy frame sequence: item i is frame i resized to image_size² and
    ImageNet-normalised, (3, S, S) float32 on the CPU, made on access (small LRU for repeated key frames).

    The resize/normalise steps are those of sam2's own JPEG loader (PIL bicubic, /255, mean/std).
    """

    def __init__(self, frames: Sequence[np.ndarray], image_size: int, cache_size: int = 16) -> None:
        if len(frames) == 0:
            raise VideoError("SAM2 needs at least one frame")
        self.frames, self.image_size = frames, int(image_size)
        first = as_rgb(frames[0])
        self.video_height, self.video_width = int(first.shape[0]), int(first.shape[1])
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = int(index)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        frame = as_rgb(self.frames[index])
        if frame.shape[:2] != (self.video_height, self.video_width):
            raise VideoError(
                f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, frame 0 is "
                f"{self.video_width}x{self.video_height}: all frames must have one size"
            )
        size = (self.image_size, self.image_size)
        resized = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))
        image = torch.from_numpy(resized / 255.0).permute(2, 0, 1).to(torch.float32)
        image = (image - self._mean) / self._std
        with self._lock:
            self._cache[index] = image
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return image


# ------------------------------------------------------------------------------------------------ sam2 hooks


_hooks_lock = threading.Lock()
_hooks_installed = False


def _install_sam2_hooks() -> None:
    """Teach the sam2 package three things, once per process, without changing its behaviour otherwise:
    take a `Sam2Frames` as the video (its loader only knows paths), keep its per-call progress bars quiet,
    and fill mask holes (spec §9, `fill_hole_area=8`) on the CPU when its CUDA extension `_C` is not built.
    """
    global _hooks_installed
    with _hooks_lock:
        if _hooks_installed:
            return
        import sam2.sam2_video_predictor as svp
        import sam2.utils.misc as misc
        from tqdm import tqdm

        original_loader = svp.load_video_frames

        @functools.wraps(original_loader)
        def load_video_frames(video_path: Any, image_size: int, *args: Any, **kwargs: Any) -> Any:
            if isinstance(video_path, Sam2Frames):
                if video_path.image_size != image_size:
                    raise ValueError(
                        f"frames prepared for {video_path.image_size} px, model takes {image_size} px"
                    )
                return video_path, video_path.video_height, video_path.video_width
            return original_loader(video_path, image_size, *args, **kwargs)

        svp.load_video_frames = load_video_frames
        svp.tqdm = functools.partial(tqdm, disable=True)
        if importlib.util.find_spec("sam2._C") is None:
            misc.get_connected_components = _connected_components_cpu
        _hooks_installed = True


def _connected_components_cpu(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sam2.utils.misc.get_connected_components without CUDA: 8-connected labels and per-pixel component
    areas of (N, 1, H, W) binary masks (0 and area 0 outside the components)."""
    import cv2

    binary = mask.to(torch.uint8).cpu().numpy()
    labels = np.zeros(binary.shape, dtype=np.int32)
    areas = np.zeros(binary.shape, dtype=np.int32)
    for n in range(binary.shape[0]):
        _, lab, stats, _ = cv2.connectedComponentsWithStats(binary[n, 0], connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        area[0] = 0  # cv2's label 0 is the zero pixels of the input
        labels[n, 0], areas[n, 0] = lab, area[lab]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


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


# ------------------------------------------------------------------------------------------------ predictor


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
        _install_sam2_hooks()
        self.model = model
        self.device = torch.device(device) if device is not None else torch.device(model.device)
        self.dtype = None if dtype in (None, torch.float32) else dtype
        self.name = name
        self.random_weights = random_weights
        self.image_size = int(model.image_size)
        self.image_cache_size = image_cache_size
        self._iou = _IoURecorder(model)
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
        return _FeatureCachingState(state, capacity)

    def reset_state(self, state: dict[str, Any]) -> None:
        with self._lock:
            self.model.reset_state(state)

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
        iou = torch.full((1,), float("nan")) if iou is None else iou.reshape(-1)[:1].cpu()
        return int(f), list(obj_ids), _logits(logits), iou

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
            f, obj_ids, logits = self.model.add_new_mask(state, frame_idx, obj_id, torch.from_numpy(binary))
        return int(f), list(obj_ids), _logits(logits)

    def propagate_in_video(
        self,
        state: dict[str, Any],
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Meta's propagation: yields (frame_idx, obj_ids, logits (n_obj, 1, H, W)) frame by frame."""
        steps = self.model.propagate_in_video(
            state,
            start_frame_idx=start_frame_idx,
            max_frame_num_to_track=max_frame_num_to_track,
            reverse=reverse,
        )
        while True:
            # autocast is thread-local state: enter it per step, never across a yield to the caller
            with self._lock, self._context():
                try:
                    f, obj_ids, logits = next(steps)
                except StopIteration:
                    return
                except RuntimeError as exc:
                    if "No input points or masks" in str(exc):
                        raise PromptError("nothing to propagate: add points, a box or a mask first") from exc
                    raise
            if state.get(_FORGET_HISTORY):
                self._forget_old_frames(state, int(f), reverse)
            yield int(f), list(obj_ids), _logits(logits)

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


def _np(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _logits(logits: torch.Tensor) -> torch.Tensor:
    return logits.detach().to(device="cpu", dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ loading


@dataclass(frozen=True)
class Sam2Files:
    """Where a SAM2 model comes from: its config (DictConfig with `model`) and `{"model": state_dict}` file."""

    config: Any
    checkpoint: Path
    source: str
    random_weights: bool = False


def autocast_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for SAM2 (None = plain fp32). Default: bf16 on GPUs that support it, else fp32."""
    if dtype is None:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    dtype = torch_dtype(dtype)
    return None if dtype == torch.float32 else dtype


def _sam2_package_dir() -> Path:
    spec = importlib.util.find_spec("sam2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the `sam2` package is not installed (pip install sam2)")
    return Path(next(iter(spec.submodule_search_locations)))


def load_sam2_config(config: str | Path) -> Any:
    """A sam2 hydra model config as a DictConfig: a yaml/json file, or a config of the sam2 package
    ("configs/sam2.1/sam2.1_hiera_l.yaml", or just "sam2.1_hiera_l.yaml")."""
    from omegaconf import OmegaConf

    path = Path(config).expanduser()
    if not path.is_file():
        package = _sam2_package_dir()
        name = str(config)
        candidates = [
            package / name,
            package / "configs" / "sam2.1" / name,
            package / "configs" / "sam2" / name,
        ]
        path = next((c for c in candidates if c.is_file()), path)
    if not path.is_file():
        raise ModelNotFoundError(f"SAM2 config not found: {config}")
    try:
        if path.suffix.lower() == ".json":
            cfg = OmegaConf.create(json.loads(path.read_text()))
        else:
            cfg = OmegaConf.load(path)
    except Exception as exc:
        raise ModelNotFoundError(f"cannot read SAM2 config {path}: {exc}") from exc
    if not _is_sam2_config(cfg):
        raise ModelNotFoundError(
            f"{path} is not a sam2 model config (it needs a `model:` section with `_target_`)"
        )
    return cfg


def _is_sam2_config(cfg: Any) -> bool:
    try:
        return "model" in cfg and "_target_" in cfg["model"]
    except TypeError:
        return False


def _config_for_checkpoint_name(name: str) -> str | None:
    for config_name, checkpoint_name in HUB_MODELS.values():
        if Path(name).name == checkpoint_name:
            return config_name
    return None


def _local_files(path: Path, config: str | Path | None) -> Sam2Files:
    if path.is_dir():
        checkpoints = sorted(p for p in path.iterdir() if p.suffix.lower() in (".pt", ".pth"))
        if not checkpoints:
            hint = ""
            if (path / "model.safetensors").is_file():
                hint = (
                    " (it holds a transformers-format model; this backend loads sam2-package .pt checkpoints)"
                )
            raise ModelNotFoundError(f"no SAM2 checkpoint (.pt) in {path}{hint}")
        if len(checkpoints) > 1:
            names = ", ".join(p.name for p in checkpoints)
            raise ModelNotFoundError(f"{path} holds several checkpoints ({names}): pass the file itself")
        checkpoint = checkpoints[0]
    else:
        checkpoint = path
    if config is None:
        config = _find_config(checkpoint)
    cfg = load_sam2_config(config)
    return Sam2Files(cfg, checkpoint, str(path), bool(cfg.get("random_weights", False)))


def _find_config(checkpoint: Path) -> str | Path:
    folder = checkpoint.parent
    near = [folder / f"{checkpoint.stem}{s}" for s in (".yaml", ".yml", ".json")]
    near += [folder / f"config{s}" for s in (".yaml", ".yml", ".json")]
    for candidate in near:
        if candidate.is_file() and (candidate.suffix != ".json" or _json_is_sam2(candidate)):
            return candidate
    yamls = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
    if len(yamls) == 1:
        return yamls[0]
    known = _config_for_checkpoint_name(checkpoint.name)
    if known is not None:
        return known
    raise ModelNotFoundError(
        f"no SAM2 config for {checkpoint}: put its yaml next to it (e.g. {checkpoint.stem}.yaml) or pass config="
    )


def _json_is_sam2(path: Path) -> bool:
    try:
        return _is_sam2_config(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


def _hub_files(model_id: str) -> Sam2Files:
    from huggingface_hub import hf_hub_download

    config_name, filename = HUB_MODELS[model_id]
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        checkpoint = hf_hub_download(repo_id=model_id, filename=filename, local_files_only=offline)
    except Exception as exc:
        if offline:
            raise ModelNotFoundError(
                f"SAM2 {model_id} ({filename}) is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                "download it once with network access, or pass a local checkpoint/folder"
            ) from exc
        raise ModelNotFoundError(f"cannot download SAM2 {model_id}/{filename}: {exc}") from exc
    return Sam2Files(load_sam2_config(config_name), Path(checkpoint), model_id)


def resolve_sam2(name_or_path: str | Path | None = None, config: str | Path | None = None) -> Sam2Files:
    """Find the config and checkpoint of a hub id (facebook/sam2[.1]-hiera-{tiny,small,base-plus,large}),
    a local checkpoint file (+ config), or a local folder (config yaml/json + one .pt)."""
    name = str(name_or_path or DEFAULT_SAM2)
    path = Path(name).expanduser()
    if path.exists():
        return _local_files(path, config)
    if name in HUB_MODELS:
        return _hub_files(name)
    if path.suffix.lower() in (".pt", ".pth") or (os.sep in name and not name.startswith("facebook/")):
        raise ModelNotFoundError(f"SAM2 checkpoint not found: {path}")
    known = ", ".join(HUB_MODELS)
    raise ModelNotFoundError(f"unknown SAM2 model {name!r}: pass a local checkpoint/folder or one of {known}")


def build_sam2_model(files: Sam2Files, device: torch.device, apply_postprocessing: bool = True) -> Any:
    """Instantiate sam2's SAM2VideoPredictor from a config and load the checkpoint (strict)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(files.config, resolve=True))
    overrides = dict(VIDEO_OVERRIDES, **(POSTPROCESSING_OVERRIDES if apply_postprocessing else {}))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    try:
        model = instantiate(cfg.model, _recursive_=True)
    except Exception as exc:
        raise ModelNotFoundError(f"cannot build SAM2 from the config of {files.source}: {exc}") from exc
    try:
        checkpoint = torch.load(files.checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelNotFoundError(f"cannot read SAM2 checkpoint {files.checkpoint}: {exc}") from exc
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ModelNotFoundError(
            f"{files.checkpoint} is not a sam2 checkpoint (expected a dict with 'model')"
        )
    try:
        missing, unexpected = model.load_state_dict(checkpoint["model"], strict=False)
    except RuntimeError as exc:  # weights of other shapes: another model size or image size
        first_problems = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:3])
        raise ModelNotFoundError(
            f"checkpoint {files.checkpoint} does not fit its config (another model or image size?): {first_problems}"
        ) from exc
    if missing or unexpected:
        raise ModelNotFoundError(
            f"checkpoint {files.checkpoint} does not fit its config: {len(missing)} missing weights "
            f"{list(missing)[:3]}, {len(unexpected)} unexpected {list(unexpected)[:3]}"
        )
    return model.to(device).eval()


def load_sam2_predictor(
    name_or_path: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    config: str | Path | None = None,
    apply_postprocessing: bool = True,
) -> Sam2VideoPredictor:
    """A ready SAM2 video predictor. name_or_path: hub id (default facebook/sam2.1-hiera-large), a .pt
    checkpoint (config next to it, from its file name, or `config=`), or a folder (config + checkpoint).
    Hub checkpoints are downloaded with huggingface_hub, or only looked up in its cache when HF_HUB_OFFLINE
    is set. device: cuda > mps > cpu by default. dtype: autocast bf16/fp16/fp32 (default bf16 on CUDA)."""
    files = resolve_sam2(name_or_path, config)
    dev = pick_device(device)
    model = build_sam2_model(files, dev, apply_postprocessing)
    return Sam2VideoPredictor(
        model,
        device=dev,
        dtype=autocast_dtype(dtype, dev),
        name=files.source,
        random_weights=files.random_weights,
    )


# ------------------------------------------------------------------------------------------------ tiny model


def build_tiny_sam2(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a random-weight 256-px SAM2.1 (17M parameters) as `config.yaml` + `{"model": state_dict}`
    checkpoint, the on-disk format of the real models; `load_sam2_predictor(out_dir)` reads it back.
    Its config carries `random_weights: true` so outputs made with it are labelled as meaningless."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_sam2_config(TINY_BASE_CONFIG)
    for key, value in TINY_OVERRIDES.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate(cfg.model, _recursive_=True)
    with torch.no_grad():
        # a random object-score head mostly says "no object", which blanks every mask; a positive bias keeps
        # the (random) decoder masks, so tests see masks that depend on the prompts
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(TINY_OBJECT_SCORE_BIAS)
    cfg.random_weights = True
    header = "# @package _global_\n# Tiny random-weight SAM2.1 for tests (decaf_backend.sam2_session.build_tiny_sam2)\n"
    (out / "config.yaml").write_text(header + OmegaConf.to_yaml(cfg))
    torch.save({"model": model.state_dict()}, out / TINY_CHECKPOINT)
    return out
