"""Finding and loading SAM2 models: hub ids, checkpoints, folders -> a ready `Sam2VideoPredictor`.

Follows sam2's `build_sam.build_sam2_video_predictor` (same hub files, same video post-processing) but
reads configs from files and reports every problem as a `ModelNotFoundError`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_SAM2
from ..devices import pick_device, torch_dtype
from ..errors import ModelNotFoundError
from .predictor import Sam2VideoPredictor

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


@dataclass(frozen=True)
class Sam2Files:
    """Where a SAM2 model comes from: its config (DictConfig with `model`) and `{"model": state_dict}` file."""

    config: Any
    checkpoint: Path
    source: str

    @property
    def random_weights(self) -> bool:
        """Test models built by `make-tiny-models` say so in their config."""
        return bool(self.config.get("random_weights", False))


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
    return Sam2Files(cfg, checkpoint, str(path))


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
