"""Attention rollout, last row only (spec §4), computed top-down as a vector sweep (§14.2).

Two entry points share the same maths:
* from fp32 probability matrices (B, H, L, L) per layer (small models, tests);
* from post-RoPE Q/K per layer, blockwise (§14.3) — the production path. Only blocks of
  `block_rows` query rows are ever turned into probabilities, so the full B·H·L·L tensor never exists.

Conventions kept from the reference (§13): head weights use the visual range of batch item 0 for every
item; heads are fused with a plain mean of the weighted matrices (not divided by Σw); the residual mix
is 0.5/0.5. `last_index` lets each sequence end at its own true last token (right padding): the result
then equals running that item alone with length last_index+1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = [
    "head_weights_from_probs",
    "rollout_last_row_from_probs",
    "rollout_last_row_from_qk",
    "visual_range_from_mask",
]


def visual_range_from_mask(visual_mask: Tensor) -> tuple[int, int]:
    """(first, last) visual position of batch item 0, inclusive — the range the reference uses for all
    items (§4 step 2, §13). `visual_mask` is (B, L) or (L,) bool."""
    row = torch.as_tensor(visual_mask)
    row = row[0] if row.dim() == 2 else row
    idx = torch.nonzero(row.reshape(-1)).reshape(-1)
    if idx.numel() == 0:
        raise ValueError("the visual mask of batch item 0 has no visual token")
    return int(idx[0]), int(idx[-1])


def _check_range(visual_range: tuple[int, int], length: int) -> tuple[int, int]:
    v0, v1 = int(visual_range[0]), int(visual_range[1])
    if not 0 <= v0 <= v1 < length:
        raise ValueError(f"visual_range {visual_range} is not an inclusive range inside 0..{length - 1}")
    return v0, v1


def _last_indices(last_index: Tensor | Sequence[int] | None, batch: int, length: int) -> list[int]:
    if last_index is None:
        return [length - 1] * batch
    values = [int(x) for x in torch.as_tensor(last_index).reshape(-1).tolist()]
    if len(values) != batch:
        raise ValueError(f"last_index has {len(values)} entries for a batch of {batch}")
    for x in values:
        if not 0 <= x < length:
            raise ValueError(f"last_index {x} outside 0..{length - 1}")
    return values


@contextmanager
def _ieee_fp32_matmul(device: torch.device) -> Iterator[None]:
    """TF32 would move the rollout by ~1e-3 relative (§4 dtype summary): force IEEE fp32 matmuls on CUDA
    for the duration (other libraries, e.g. SAM2 demos, switch TF32 on globally)."""
    matmul = torch.backends.cuda.matmul
    if device.type != "cuda" or matmul.fp32_precision == "ieee":
        yield
        return
    previous = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def _weights_from_row_max_sums(sums: Tensor, rows: int) -> Tensor:
    """s_h = mean over rows of the per-row visual max; w_h = s_h / max_h s_h (§4 step 2)."""
    mean = sums / rows
    return mean / mean.amax(dim=-1, keepdim=True)


def head_weights_from_probs(
    probs: Tensor, visual_range: tuple[int, int], last_index: Tensor | Sequence[int] | None = None
) -> Tensor:
    """Head weights (B, H) fp32 from probabilities (B, H, L, L) (§4 step 2).

    `visual_range` is inclusive (first, last visual position of batch item 0). With `last_index`, item b
    averages rows 0..last_index[b] only (default: all L rows, as the reference does).
    """
    batch, _, length, _ = probs.shape
    v0, v1 = _check_range(visual_range, length)
    ends = _last_indices(last_index, batch, length)
    return torch.stack(
        [_item_head_weights(probs[b, :, : end + 1, : end + 1], (v0, v1)) for b, end in enumerate(ends)]
    )


def _item_head_weights(probs: Tensor, visual_range: tuple[int, int]) -> Tensor:
    """(H,) weights of one sequence whose probabilities (H, n, n) end at its true last token."""
    v0, v1 = visual_range
    n = probs.shape[-1]
    if v0 >= n:
        raise ValueError(f"visual range starts at {v0}, after the last token {n - 1}")
    row_max = probs.float()[..., v0 : min(v1, n - 1) + 1].amax(dim=-1)  # (H, n)
    return _weights_from_row_max_sums(row_max.sum(dim=-1), n)


def _sweep_step(v: Tensor, u: Tensor, weights: Tensor) -> Tensor:
    """v · Atil = 0.5·(1/H)·Σ_h w_h (v·A_h) + 0.5·v, with u[h] = v·A_h (§14.2)."""
    return 0.5 * (weights[:, None] * u).mean(dim=0) + 0.5 * v


def rollout_last_row_from_probs(
    probs_per_layer: Sequence[Tensor],
    visual_range: tuple[int, int],
    last_index: Tensor | Sequence[int] | None = None,
    return_head_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Last row (B, L) fp32 of Atil_E ··· Atil_s from per-layer probabilities (B, H, L, L).

    Layers are given in increasing order s..E. With `return_head_weights`, also returns (nl, B, H).
    """
    if len(probs_per_layer) == 0:
        raise ValueError("no rollout layers given")
    batch, _, length, _ = probs_per_layer[0].shape
    visual_range = _check_range(visual_range, length)
    ends = _last_indices(last_index, batch, length)
    device = probs_per_layer[0].device
    rows = torch.zeros(batch, length, dtype=torch.float32, device=device)
    weights_rev: list[Tensor] = []
    with _ieee_fp32_matmul(device):
        for b, end in enumerate(ends):
            n = end + 1
            v = torch.zeros(n, dtype=torch.float32, device=device)
            v[end] = 1.0
            item_weights = []
            for probs in reversed(probs_per_layer):
                p = probs[b, :, :n, :n].float()
                w = _item_head_weights(p, visual_range)
                v = _sweep_step(v, torch.einsum("i,hij->hj", v, p), w)
                item_weights.append(w)
            rows[b, :n] = v
            weights_rev.append(torch.stack(item_weights))  # (nl reversed, H)
    if not return_head_weights:
        return rows
    weights = torch.stack(weights_rev, dim=1).flip(0)  # (nl, B, H), increasing layer order
    return rows, weights


def _layer_pass(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    visual_range: tuple[int, int],
    block_rows: int,
    heads_per_block: int,
    visual_positions: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One layer for one sequence: returns (v·Atil (n,), head weights (H,)).

    q: (H, n, d), k: (Hk, n, d) (any dtype, upcast per block); v: (n,) fp32. Probabilities exist only
    for `heads_per_block` heads × `block_rows` rows at a time.
    """
    num_heads, n, head_dim = q.shape
    num_kv = k.shape[0]
    if num_heads % num_kv:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv} key/value heads")
    group = num_heads // num_kv
    v0, v1 = visual_range
    v1 = min(v1, n - 1)
    scale = 1.0 / float(head_dim) ** 0.5
    k32 = k.float()
    device = q.device
    # per-row visual maxima are kept (H·n floats) and summed once, so the head weights do not depend on
    # the block size (summing per block would move them by ~1e-7)
    row_max = torch.zeros(num_heads, n, dtype=torch.float32, device=device)
    u = torch.zeros(num_heads, n, dtype=torch.float32, device=device)
    side = min(block_rows, n)
    future = torch.ones(side, side, dtype=torch.bool, device=device).triu_(1)
    # softmax is left unnormalised: the row sums scale v (a block of rows) and the visual maxima (one per
    # row) instead of the whole block, and everything happens in place: the block is written once and read
    # three times (row max, exp, product), which is what a memory-bound CPU pays for
    for h0 in range(0, num_heads, heads_per_block):
        h1 = min(h0 + heads_per_block, num_heads)
        # GQA: query head h reads KV head h // group
        k_heads = k32[torch.arange(h0, h1, device=device) // group]
        for r0 in range(0, n, block_rows):
            r1 = min(r0 + block_rows, n)
            # causality: rows < r1 never see keys >= r1, and only the block's diagonal square sees the future
            scores = torch.matmul(q[h0:h1, r0:r1].float(), k_heads[:, :r1].transpose(1, 2)).mul_(scale)
            scores[..., r0:r1].masked_fill_(future[: r1 - r0, : r1 - r0], float("-inf"))
            top = scores.amax(dim=-1, keepdim=True)  # (h, b, 1)
            visual_top = None
            if visual_positions is not None:
                seen = visual_positions[visual_positions < r1]
                if seen.numel():
                    visual_top = scores[..., seen].amax(dim=-1)
            elif v0 < r1:
                visual_top = scores[..., v0 : min(v1, r1 - 1) + 1].amax(dim=-1)
            exps = scores.sub_(top).exp_()  # (h, b, r1): probabilities times their row sums
            sums = exps.sum(dim=-1)  # (h, b)
            if visual_top is not None:  # max of the probabilities = exp(max score - top) / sum
                row_max[h0:h1, r0:r1] = torch.exp(visual_top - top[..., 0]) / sums
            u[h0:h1, :r1] += torch.matmul((v[r0:r1] / sums).unsqueeze(1), exps).squeeze(1)
    weights = _weights_from_row_max_sums(row_max.sum(dim=-1), n)
    return _sweep_step(v, u, weights), weights


def rollout_last_row_from_qk(
    q_per_layer: Sequence[Tensor],
    k_per_layer: Sequence[Tensor],
    visual_range: tuple[int, int],
    block_rows: int = 256,
    last_index: Tensor | Sequence[int] | None = None,
    return_head_weights: bool = False,
    heads_per_block: int | None = None,
    visual_positions: Tensor | Sequence[int] | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Last rollout row (B, L) fp32 from post-RoPE Q (B, H, L, d) and K (B, Hk, L, d) per layer (§14.3).

    `visual_positions` (batch item 0's exact visual positions) makes the head weights take their max over
    those columns only instead of the span `visual_range`: the reference's InternVL path does this, since
    frame separators sit between its visual tokens (spec §10).

    Layers in increasing order s..E. Hk must divide H (KV heads are repeated logically, never copied to
    H). Q/K are upcast to fp32 block by block; the causal softmax is exact per row. Memory per batch item:
    O(heads_per_block·block_rows·L + H·L); `heads_per_block` defaults to one GQA group (H/Hk heads, which
    share one K). With `return_head_weights`, also returns the head weights (nl, B, H).
    """
    if len(q_per_layer) == 0 or len(q_per_layer) != len(k_per_layer):
        raise ValueError(f"need as many Q as K layers (got {len(q_per_layer)} and {len(k_per_layer)})")
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    batch, num_heads, length, _ = q_per_layer[0].shape
    for q, k in zip(q_per_layer, k_per_layer):
        if q.dim() != 4 or k.dim() != 4 or q.shape[:1] + q.shape[2:] != k.shape[:1] + k.shape[2:]:
            raise ValueError(
                f"Q {tuple(q.shape)} and K {tuple(k.shape)} must be (B, H, L, d) / (B, Hk, L, d)"
            )
        if q.shape != q_per_layer[0].shape:
            raise ValueError("all layers must have the same Q shape")
    visual_range = _check_range(visual_range, length)
    ends = _last_indices(last_index, batch, length)
    num_kv = k_per_layer[0].shape[1]
    chunk = heads_per_block or max(1, num_heads // num_kv)
    device = q_per_layer[0].device
    positions = None
    if visual_positions is not None:
        positions = torch.as_tensor(visual_positions, dtype=torch.long, device=device).reshape(-1)
        if positions.numel() == 0 or int(positions.min()) < 0 or int(positions.max()) >= length:
            raise ValueError(f"visual_positions must be non-empty and inside 0..{length - 1}")
    rows = torch.zeros(batch, length, dtype=torch.float32, device=device)
    weights_rev: list[Tensor] = []
    with torch.no_grad(), _ieee_fp32_matmul(device):
        for b, end in enumerate(ends):
            if visual_range[0] > end:
                raise ValueError(
                    f"visual range starts at {visual_range[0]}, after the last token {end} of item {b}"
                )
            n = end + 1
            v = torch.zeros(n, dtype=torch.float32, device=device)
            v[end] = 1.0
            item_weights = []
            for q, k in zip(reversed(q_per_layer), reversed(k_per_layer)):
                v, w = _layer_pass(q[b, :, :n], k[b, :, :n], v, visual_range, block_rows, chunk, positions)
                item_weights.append(w)
            rows[b, :n] = v
            weights_rev.append(torch.stack(item_weights))
    if not return_head_weights:
        return rows
    return rows, torch.stack(weights_rev, dim=1).flip(0)
