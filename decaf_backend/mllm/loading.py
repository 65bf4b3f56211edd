"""Load an MLLM checkpoint (hub id or local folder) and wrap it in the adapter of its family.

The family comes from config.json's `model_type`, never from the name, so renamed local copies work.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import DecafConfig
from ..errors import DecafError, ModelNotFoundError
from .base import MLLMAdapter

__all__ = ["RANDOM_WEIGHTS_MARKER", "load_mllm", "resolve_device", "resolve_dtype", "supported_model_types"]

log = logging.getLogger(__name__)

# written next to tiny random-weight checkpoints (mllm/tiny.py) so their outputs get labelled as such
RANDOM_WEIGHTS_MARKER = "DECAF_RANDOM_WEIGHTS"

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _load_qwen(path: str, model_type: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, AutoProcessor

    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as model_class
    else:
        from transformers import Qwen2VLForConditionalGeneration as model_class
    # SDPA everywhere: the rollout reads Q/K through qk_capture, so no eager attention is needed
    model = model_class.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    try:  # the reference used the slow (PIL/numpy) image processor; its pixels match the golden data exactly
        processor.image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
    except Exception as exc:  # noqa: BLE001 - the default backend is a fine fallback (~1e-7 pixel differences)
        log.debug("PIL image processor unavailable for %s: %s", path, exc)
    return model, processor


def _make_qwen_adapter(
    model: Any, processor: Any, config: DecafConfig, name: str, random: bool
) -> MLLMAdapter:
    from .qwen import QwenVLAdapter

    return QwenVLAdapter(model, processor, config, name=name, random_weights=random)


def _load_auto(path: str, model_type: str, device: Any, dtype: Any) -> tuple[Any, Any]:
    """LLaVA-OneVision, InternVL3 (-hf) and Qwen3-VL: transformers' own classes and processors."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    model = model.to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    if model_type == "llava_onevision":  # the reference's slow (PIL) processor: exact anyres pixels
        try:
            processor.image_processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        except Exception as exc:  # noqa: BLE001 - the torchvision backend differs by ~1e-5 in rollouts only
            log.debug("PIL image processor unavailable for %s: %s", path, exc)
    return model, processor


def _make_family_adapter(
    model: Any, processor: Any, config: DecafConfig, name: str, random: bool
) -> MLLMAdapter:
    from .internvl import InternVLAdapter
    from .llava_onevision import LlavaOnevisionAdapter
    from .qwen3_vl import Qwen3VLAdapter

    adapters = {
        "internvl": InternVLAdapter,
        "llava_onevision": LlavaOnevisionAdapter,
        "qwen3_vl": Qwen3VLAdapter,
    }
    return adapters[model.config.model_type](model, processor, config, name=name, random_weights=random)


_FAMILIES: dict[str, tuple[Callable[..., tuple[Any, Any]], Callable[..., MLLMAdapter]]] = {
    "qwen2_5_vl": (_load_qwen, _make_qwen_adapter),
    "qwen2_vl": (_load_qwen, _make_qwen_adapter),
    "internvl": (_load_auto, _make_family_adapter),
    "llava_onevision": (_load_auto, _make_family_adapter),
    "qwen3_vl": (_load_auto, _make_family_adapter),
}


def supported_model_types() -> list[str]:
    return sorted(_FAMILIES)


def resolve_device(device: str | None = None) -> Any:
    """`device` as given, else the best available: cuda > mps > cpu (see decaf_backend.devices)."""
    from ..devices import pick_device

    return pick_device(device)


def resolve_dtype(dtype: Any, device: Any) -> Any:
    """`dtype` as given (torch dtype or name like bf16/fp32), else bf16 on GPUs (cuda, mps) and fp32 on CPU."""
    import torch

    from ..devices import torch_dtype

    if dtype is None or str(dtype).lower() == "auto":
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    return torch_dtype(dtype)


def _config_from_hub(repo_id: str) -> Path:
    """config.json of a hub model, from the local cache or the hub (HF_HUB_OFFLINE=1: cache only)."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, no network: all mean "not available"
        raise ModelNotFoundError(
            f"MLLM {repo_id!r} not found locally and the hub is unreachable: set DECAF_MLLM to a local folder "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _is_hub_id(name: str) -> bool:
    return _HUB_ID.fullmatch(name) is not None


def _find_config(name_or_path: str) -> tuple[str, Path]:
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        config_file = local / "config.json"
        if not config_file.is_file():
            raise ModelNotFoundError(
                f"MLLM folder {str(local)!r} has no config.json: it is not a transformers checkpoint "
                "(set DECAF_MLLM to a folder made by save_pretrained or a hub download)"
            )
        return str(local), config_file
    if local.exists() or not _is_hub_id(name_or_path):
        raise ModelNotFoundError(
            f"MLLM {name_or_path!r} not found locally and is not a hub id (owner/name): set DECAF_MLLM to a "
            "local folder"
        )
    return name_or_path, _config_from_hub(name_or_path)


def load_mllm(
    name_or_path: str | os.PathLike[str],
    device: str | None = None,
    dtype: Any = None,
    config: DecafConfig | None = None,
) -> MLLMAdapter:
    """Load a hub id or local folder and return its family's adapter (chosen by config.json's model_type).

    device: cuda/mps/cpu or None for the best available; dtype: bf16/fp16/fp32 (or a torch dtype) or None
    for bf16 on GPU and fp32 on CPU. HF_HUB_OFFLINE=1 restricts hub ids to the local cache.
    """
    config = config or DecafConfig()
    source, config_file = _find_config(str(name_or_path))
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read {config_file}: {exc}") from exc
    if model_type not in _FAMILIES:
        raise DecafError(
            f"MLLM {str(name_or_path)!r} has model_type {model_type!r}; supported: {', '.join(supported_model_types())}"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    loader, make_adapter = _FAMILIES[model_type]
    try:
        model, processor = loader(source, model_type, torch_device, torch_dtype)
    except OSError as exc:  # weights or processor files missing (offline cache holds only config.json, ...)
        raise ModelNotFoundError(
            f"MLLM {str(name_or_path)!r} not found locally and the hub is unreachable: set DECAF_MLLM to a local "
            f"folder ({exc})"
        ) from exc
    random = (config_file.parent / RANDOM_WEIGHTS_MARKER).exists() or bool(
        getattr(model.config, "decaf_random_weights", False)
    )
    return make_adapter(model, processor, config, str(name_or_path), random)
