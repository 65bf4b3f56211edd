"""Capture post-RoPE Q and K of chosen decoder layers of an HF transformers model (spec §4, §14.3).

The rollout needs each rollout layer's query/key states after the rotary embedding (MRoPE for
Qwen2/2.5-VL). HF attention modules hand exactly those tensors to the attention function that
`ALL_ATTENTION_FUNCTIONS` dispatches on `module.config._attn_implementation`. We register one
dispatcher under our own name and, only for the captured modules and only inside the context, point
their config at it. The dispatcher records (query, key) and then calls the model's real attention
(eager / sdpa / flash), so the forward pass itself is unchanged and nothing is computed twice. Mask
creation reads the text model's own config, which is never touched.

K is stored as the model has it, i.e. with the KV heads not repeated (B, Hk, L, d); Q is (B, H, L, d).
Only the first call per layer is kept (the prefill); later calls (decoding steps) are ignored.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

__all__ = ["CAPTURE_IMPLEMENTATION", "QKCapture", "capture_qk", "find_decoder_attentions"]

CAPTURE_IMPLEMENTATION = "decaf_qk_capture"
_STATE_ATTR = "_decaf_qk_capture_state"


class _ConfigProxy:
    """The module's config with only `_attn_implementation` replaced (everything else is forwarded)."""

    def __init__(self, config: Any) -> None:
        self.__dict__["_wrapped"] = config

    @property
    def _attn_implementation(self) -> str:
        return CAPTURE_IMPLEMENTATION

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_wrapped"], name)


class QKCapture:
    """Holds the captured tensors of one forward pass, per layer index."""

    def __init__(self, layers: Iterable[int], device: torch.device | str | None = None) -> None:
        self.layers: tuple[int, ...] = tuple(sorted(set(int(i) for i in layers)))
        self.device = device
        self.q: dict[int, Tensor] = {}
        self.k: dict[int, Tensor] = {}

    def _record(self, layer: int, query: Tensor, key: Tensor) -> None:
        if layer in self.q:  # a decoding step after the prefill
            return
        query, key = query.detach(), key.detach()
        if self.device is not None:
            query, key = query.to(self.device), key.to(self.device)
        self.q[layer], self.k[layer] = query, key

    @property
    def complete(self) -> bool:
        return all(i in self.q for i in self.layers)

    def q_list(self) -> list[Tensor]:
        """Q per captured layer, in increasing layer order (the order the rollout expects)."""
        self._require_complete()
        return [self.q[i] for i in self.layers]

    def k_list(self) -> list[Tensor]:
        self._require_complete()
        return [self.k[i] for i in self.layers]

    def reset(self) -> None:
        """Forget what was captured, e.g. before the next prompt."""
        self.q.clear()
        self.k.clear()

    def _require_complete(self) -> None:
        missing = [i for i in self.layers if i not in self.q]
        if missing:
            raise RuntimeError(
                f"no Q/K captured for layers {missing}; was a forward pass run inside capture_qk?"
            )


def _capturing_attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any
):
    capture, config = getattr(module, _STATE_ATTR)
    capture._record(module._decaf_qk_layer, query, key)
    # the model's own eager function is the default its forward passes to get_interface
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    implementation = config._attn_implementation
    if implementation in (None, "eager") and eager is None:
        raise RuntimeError(f"{type(module).__name__}: cannot find its eager attention function")
    real_attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)
    proxy = module.config
    module.config = config  # flash-attention reads the implementation name from module.config
    try:
        return real_attention(module, query, key, value, *args, **kwargs)
    finally:
        module.config = proxy


AttentionInterface.register(CAPTURE_IMPLEMENTATION, _capturing_attention)


def find_decoder_attentions(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of the language model's decoder layers, in layer order.

    Looks for the ModuleList whose items have a `self_attn` with `q_proj`/`k_proj` (Qwen2, Qwen2-VL,
    Qwen2.5-VL, and the Qwen2 language models inside LLaVA-OneVision / InternVL). Vision blocks use other
    attribute names and are not matched.
    """
    found: list[list[nn.Module]] = []
    for _, child in model.named_modules():
        if isinstance(child, nn.ModuleList) and len(child) > 0:
            attns = [getattr(layer, "self_attn", None) for layer in child]
            if all(a is not None and hasattr(a, "q_proj") and hasattr(a, "k_proj") for a in attns):
                found.append(attns)
    if len(found) != 1:
        raise ValueError(f"expected one stack of decoder layers with self_attn, found {len(found)}")
    return found[0]


@contextmanager
def capture_qk(
    model: nn.Module, layers: Iterable[int], device: torch.device | str | None = None
) -> Iterator[QKCapture]:
    """Within the context, record post-RoPE Q/K of `layers` (decoder layer indices) on every forward.

    Usage: `with capture_qk(model, range(s, n_layers)) as cap: model(**inputs)`, then
    `cap.q_list()`, `cap.k_list()`. `device` optionally moves the captured tensors (e.g. to CPU).
    """
    attentions = find_decoder_attentions(model)
    capture = QKCapture(layers, device=device)
    for i in capture.layers:
        if not 0 <= i < len(attentions):
            raise ValueError(f"layer {i} outside 0..{len(attentions) - 1}")
    patched: list[nn.Module] = []
    try:
        for i in capture.layers:
            module = attentions[i]
            if hasattr(module, _STATE_ATTR):
                raise RuntimeError(f"layer {i} is already being captured")
            setattr(module, _STATE_ATTR, (capture, module.config))
            module._decaf_qk_layer = i
            module.config = _ConfigProxy(module.config)
            patched.append(module)
        yield capture
    finally:
        for module in patched:
            module.config = getattr(module, _STATE_ATTR)[1]
            delattr(module, _STATE_ATTR)
            del module._decaf_qk_layer
