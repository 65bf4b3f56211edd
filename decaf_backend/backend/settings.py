"""Every setting of the backend as an environment variable with a default (README "Environment variables")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from .. import __version__
from ..config import parse_env_value


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = ""  # LABEL_STUDIO_URL: media downloads and posting background predictions
    label_studio_api_key: str = ""  # LABEL_STUDIO_API_KEY: legacy token or Personal Access Token
    basic_auth_user: str = ""  # BASIC_AUTH_USER / BASIC_AUTH_PASS: required on every route but /health
    basic_auth_pass: str = ""
    webhook_secret: str = ""  # WEBHOOK_SECRET: /webhook also accepts header X-Webhook-Secret with this value
    model_dir: Path = Path.home() / ".cache" / "decaf-backend"  # MODEL_DIR: media cache, stored segmentations
    model_version: str = f"decaf-{__version__}"  # MODEL_VERSION
    mllm: str = ""  # DECAF_MLLM (pipeline default if empty)
    sam2: str = ""  # DECAF_SAM2
    device: str = ""  # DECAF_DEVICE: cuda / mps / cpu
    dtype: str = ""  # DECAF_DTYPE: bf16 / fp16 / fp32
    prompt_field: str = "prompt"  # DECAF_PROMPT_FIELD: task data key holding a text prompt
    max_media_mb: float = 2048.0  # DECAF_MAX_MEDIA_MB: per downloaded file
    max_video_seconds: float = 1800.0  # DECAF_MAX_VIDEO_SECONDS
    max_frames: int = 20000  # DECAF_MAX_FRAMES
    download_timeout_s: float = 60.0  # DECAF_DOWNLOAD_TIMEOUT_S: connect/read timeout of one download
    session_cache_mb: float = 4096.0  # DECAF_SESSION_CACHE_MB: byte budget of live segmentations
    store_mb: float = 10240.0  # DECAF_STORE_MB: byte budget of the stored segmentations on disk (LRU)
    session_bytes_per_frame: int = 2 << 20  # DECAF_SESSION_BYTES_PER_FRAME: SAM2 state estimate per frame
    open_wait_s: float = 5.0  # DECAF_OPEN_WAIT_S: a one-task context-less /predict waits this long
    batch_wait_s: float = 80.0  # DECAF_BATCH_WAIT_S: a several-task /predict waits this long
    interactive_wait_s: float = (
        85.0  # DECAF_INTERACTIVE_WAIT_S: a correction waits this long for a running job
    )
    skip_empty_masks: bool = False  # DECAF_SKIP_EMPTY_MASKS: omit brush items of frames with an empty mask
    preload: bool = True  # DECAF_PRELOAD: load the models when `serve` starts, not on the first request
    host: str = "0.0.0.0"  # HOST
    port: int = 9090  # PORT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = parse_env_value(raw, f.type, env_name(f.name))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "model_version" not in values and any(_random_weights(values.get(k)) for k in ("mllm", "sam2")):
            # predictions of the tiny test models must not pass for real ones in the Label Studio UI
            values["model_version"] = f"{cls.model_version}-random-weights"
        return cls(**values)


def _random_weights(model: object) -> bool:
    """True for checkpoints made by `make-tiny-models` (they carry a marker)."""
    folder = Path(str(model)) if model else None
    if folder is None or not folder.is_dir():
        return False
    if (folder / "DECAF_RANDOM_WEIGHTS").is_file():
        return True
    config = folder / "config.yaml"
    return config.is_file() and "random_weights: true" in config.read_text()


_ENV_NAMES = {
    "label_studio_url": "LABEL_STUDIO_URL",
    "label_studio_api_key": "LABEL_STUDIO_API_KEY",
    "basic_auth_user": "BASIC_AUTH_USER",
    "basic_auth_pass": "BASIC_AUTH_PASS",
    "webhook_secret": "WEBHOOK_SECRET",
    "model_dir": "MODEL_DIR",
    "model_version": "MODEL_VERSION",
    "host": "HOST",
    "port": "PORT",
}


def env_name(field_name: str) -> str:
    return _ENV_NAMES.get(field_name, f"DECAF_{field_name.upper()}")
