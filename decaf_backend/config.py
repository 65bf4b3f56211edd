"""Every hyper-parameter of DecAF in one typed config, with the reference defaults (spec §11)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DecafError

# the checkpoints used when neither an argument nor DECAF_MLLM / DECAF_SAM2 names one
DEFAULT_MLLM = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_SAM2 = "facebook/sam2.1-hiera-large"


@dataclass(frozen=True)
class DecafConfig:
    # §1 frame sampling
    num_key_frames: int = 16
    # §3 visual input sizes (Qwen family); per-model values may override these
    tokens_per_frame: int = 400
    frame_scale: int = 2
    # §4 rollout; None = the adapter's per-model default (half depth)
    rollout_start_layer: int | None = None
    rollout_block_rows: int = 256
    # §5 smoothing
    gaussian_sigma: float = 1.0
    video_kernel_size: int = 3
    frame_kernel_size: int = 7
    # §8 point prompts
    point_threshold: float = 0.8
    # §9 SAM2 stage
    nms_iou_threshold: float = 0.7
    final_score_threshold: float = 0.8
    # §2 generation
    max_new_tokens: int = 128
    frame_batch_size: int = 8
    # prompt template variants (reference "ver 0")
    prompt_version: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> DecafConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> DecafConfig:
        """Read `DECAF_<FIELD>` environment variables (e.g. DECAF_POINT_THRESHOLD=0.7), then explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            raw = environ.get(f"DECAF_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = parse_env_value(raw, f.type, f"DECAF_{f.name.upper()}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def parse_env_value(raw: str, type_name: Any, variable: str) -> Any:
    """An environment variable's text as the field's type (bool, int, float, Path; else the text)."""
    text = str(type_name)
    try:
        if text == "bool":
            if raw.strip().lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if text in ("int", "int | None"):
            return int(raw)
        if text == "float":
            return float(raw)
        if text == "Path":
            return Path(raw).expanduser()
    except ValueError as exc:
        raise DecafError(f"{variable}={raw!r} is not a valid {text}") from exc
    return raw
