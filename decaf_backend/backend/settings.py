"""Every setting of the backend as an environment variable with a default (README "Environment variables")."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from .. import __version__
from ..config import parse_env_value
from ..errors import DecafError


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = ""  # LABEL_STUDIO_URL: media downloads and posting background predictions
    # secrets are left out of repr(): a logged Settings shows no token or password
    label_studio_api_key: str = field(default="", repr=False)  # LABEL_STUDIO_API_KEY: legacy token or PAT
    basic_auth_user: str = ""  # BASIC_AUTH_USER / BASIC_AUTH_PASS: required on every route but /health
    basic_auth_pass: str = field(default="", repr=False)
    webhook_secret: str = field(
        default="", repr=False
    )  # WEBHOOK_SECRET: /webhook also accepts X-Webhook-Secret
    allow_unauthenticated: bool = False  # DECAF_ALLOW_UNAUTHENTICATED: serve off loopback without basic auth
    model_dir: Path = Path.home() / ".cache" / "decaf-backend"  # MODEL_DIR: media cache, stored segmentations
    model_version: str = f"decaf-{__version__}"  # MODEL_VERSION
    mllm: str = ""  # DECAF_MLLM (pipeline default if empty)
    sam2: str = ""  # DECAF_SAM2
    device: str = ""  # DECAF_DEVICE: cuda / mps / cpu
    dtype: str = ""  # DECAF_DTYPE: bf16 / fp16 / fp32
    prompt_field: str = "prompt"  # DECAF_PROMPT_FIELD: task data key holding a text prompt
    max_media_mb: float = 2048.0  # DECAF_MAX_MEDIA_MB: per downloaded or local file
    media_cache_mb: float = 8192.0  # DECAF_MEDIA_CACHE_MB: byte budget of MODEL_DIR/media (LRU eviction)
    media_allowed_prefixes: str = ""  # DECAF_MEDIA_ALLOWED_PREFIXES: URL prefixes media may come from
    local_files_document_root: str = ""  # LOCAL_FILES_DOCUMENT_ROOT: read local-files media from this folder
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
    ray_address: str = ""  # DECAF_RAY_ADDRESS: every pre-annotation goes to this Ray cluster's workers
    ray_workers: int = (
        0  # DECAF_RAY_WORKERS: large batches go to an embedded local Ray with N workers (0: off)
    )
    ray_batch_min: int = 8  # DECAF_RAY_BATCH_MIN: a Retrieve-predictions batch this large goes to Ray
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
    "local_files_document_root": "LOCAL_FILES_DOCUMENT_ROOT",
    "model_dir": "MODEL_DIR",
    "model_version": "MODEL_VERSION",
    "host": "HOST",
    "port": "PORT",
}


def env_name(field_name: str) -> str:
    return _ENV_NAMES.get(field_name, f"DECAF_{field_name.upper()}")


# ------------------------------------------------------------------------------------------------ access rules


def is_loopback_host(host: str) -> bool:
    """True for a bind address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class AccessError(DecafError):
    """The server would be reachable by others without authentication (or with an unusable password)."""


def check_serving_access(settings: Settings) -> str | None:
    """Refuse (AccessError) what must not start; return a warning text for what may start but should know."""
    user, password = settings.basic_auth_user, settings.basic_auth_pass
    if user and not password:
        raise AccessError("BASIC_AUTH_USER is set but BASIC_AUTH_PASS is empty: set a non-empty password")
    if password and not user:
        raise AccessError("BASIC_AUTH_PASS is set but BASIC_AUTH_USER is empty: set both")
    if user:
        return None
    where = f"{settings.host}:{settings.port}"
    if is_loopback_host(settings.host):
        return (
            f"serving on {where} without authentication: only this machine can reach it; "
            "set BASIC_AUTH_USER and BASIC_AUTH_PASS before listening on other addresses"
        )
    if settings.allow_unauthenticated:
        return (
            f"serving on {where} WITHOUT authentication (DECAF_ALLOW_UNAUTHENTICATED=true): anyone who reaches "
            "this port can run models and make the backend download media"
        )
    raise AccessError(
        f"refusing to serve on {where} without authentication: anyone who reaches it could run the models and "
        "make the backend fetch media. Set BASIC_AUTH_USER and BASIC_AUTH_PASS (and the same pair in Label "
        "Studio's model connection), or listen on 127.0.0.1 (--host 127.0.0.1), or set "
        "DECAF_ALLOW_UNAUTHENTICATED=true if a firewall or proxy already guards this port"
    )


def label_studio_access(settings: Settings, from_setup: tuple[str, str] | None) -> tuple[str, str] | None:
    """The Label Studio (URL, token) to use: the configured ones always win over what /setup sent.

    /setup is a request anyone with access to the backend can make, so it may only fill in what the operator left
    unset: with LABEL_STUDIO_URL set its host is ignored; with LABEL_STUDIO_API_KEY set its token is ignored, and
    the key is never sent to a host /setup named (so without LABEL_STUDIO_URL nothing is reachable).
    """
    url, key = settings.label_studio_url, settings.label_studio_api_key
    if url and key:
        return url, key
    if key:  # our key must not go to a host named by a request
        return None
    if url:
        return (url, from_setup[1]) if from_setup else None
    return from_setup
