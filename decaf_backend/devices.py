"""Device and dtype choice shared by the MLLM and SAM2 loaders."""

from __future__ import annotations

import torch

from .errors import DecafError

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """`device` as given (checked to exist on this machine), else the best available: cuda > mps > cpu."""
    if device:
        try:
            chosen = torch.device(device)
        except RuntimeError as exc:
            raise DecafError(f"unknown device {device!r}: use cuda, cuda:N, mps or cpu") from exc
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise DecafError(f"device {device!r} was asked for but CUDA is not available on this machine")
        if chosen.type == "mps" and not _mps_available():
            raise DecafError(f"device {device!r} was asked for but MPS is not available on this machine")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from a dtype or a name such as bf16, fp16, fp32, "torch.bfloat16"."""
    if isinstance(dtype, torch.dtype):
        return dtype
    found = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if found is None:
        raise DecafError(f"unknown dtype {dtype!r}: use bf16, fp16 or fp32")
    return found
