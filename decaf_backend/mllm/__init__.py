"""The multimodal LLM side of DecAF: prompts, adapters per model family, loading, tiny test models.

`load_mllm` and the adapters import transformers lazily, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from ..fusion import rollout_to_map
from .base import MLLMAdapter
from .loading import load_mllm, resolve_device, resolve_dtype, supported_model_types

__all__ = [
    "MLLMAdapter",
    "build_tiny_qwen",
    "load_mllm",
    "resolve_device",
    "resolve_dtype",
    "rollout_to_map",
    "supported_model_types",
]


def build_tiny_qwen(kind: str, out_dir: Any, seed: int = 0) -> Any:
    """See `decaf_backend.mllm.tiny.build_tiny_qwen` (imported on use: it needs transformers)."""
    from .tiny import build_tiny_qwen as build

    return build(kind, out_dir, seed=seed)
