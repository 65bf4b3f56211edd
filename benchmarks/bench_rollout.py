"""Rollout cost: the reference's literal computation against ours, in one process, on random Q/K.

Reference (spec §4 as written): per rollout layer, the full fp32 probability tensor (B, H, L, L), head
weights, the fused L×L matrix, then the matrix chain R ← Ã_l·R (an L×L×L product per layer), last row kept.
Ours (§14.2–14.3): top-down vector sweep, probabilities recomputed blockwise from Q/K, never L×L per head.

    python benchmarks/bench_rollout.py                      # CPU-sized defaults
    python benchmarks/bench_rollout.py --device cuda --length 3000 --heads 28 --kv-heads 4 --layers 14

Prints both timings, the speed ratio, the peak memory of each (CUDA: allocator peak; CPU: the size of the
largest tensors each method must hold) and the max abs difference of the two results.
"""

from __future__ import annotations

import argparse
import time

import torch

from decaf_backend.rollout import rollout_last_row_from_qk


def reference_rollout(qs, ks, visual_range):
    """The literal reference: full probabilities per layer and the L×L×L matrix chain."""
    result = None
    for q, k in zip(qs, ks):
        b, h, length, d = q.shape
        k = k.repeat_interleave(h // k.shape[1], dim=1)
        scores = q.float() @ k.float().transpose(-1, -2) / d**0.5
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        del scores
        result = reference_layer_step(probs, visual_range, result)
        del probs
    return result[:, -1, :]


def reference_layer_step(probs, visual_range, result=None):
    """One rollout layer as the reference computes it from its fp32 probabilities (B, H, L, L): head
    weights, the head-weighted mean Ã = 0.5·Ā + 0.5·I (L×L) and the chain step Ã·R (spec §4)."""
    v0, v1 = visual_range
    head_score = probs[..., v0 : v1 + 1].amax(dim=-1).mean(dim=-1)
    weights = head_score / head_score.amax(dim=-1, keepdim=True)
    fused = (weights[..., None, None] * probs).mean(dim=1)
    eye = torch.eye(probs.shape[-1], device=probs.device)
    layer = 0.5 * fused + 0.5 * eye
    return layer if result is None else layer @ result


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return out, time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=800)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    shape_q = (args.batch, args.heads, args.length, args.head_dim)
    shape_k = (args.batch, args.kv_heads, args.length, args.head_dim)
    qs = [(torch.randn(shape_q, generator=gen) * 2).to(device, dtype) for _ in range(args.layers)]
    ks = [(torch.randn(shape_k, generator=gen) * 2).to(device, dtype) for _ in range(args.layers)]
    visual_range = (args.length // 10, args.length * 8 // 10)

    best = {}
    for name, fn in (
        ("reference", lambda: reference_rollout(qs, ks, visual_range)),
        ("decaf_backend", lambda: rollout_last_row_from_qk(qs, ks, visual_range)),
    ):
        runs = [timed(fn, device) for _ in range(args.repeats)]
        best[name] = min(runs, key=lambda r: r[1])

    b, h, length = args.batch, args.heads, args.length
    held_ref = 4 * (b * h * length * length + 2 * b * length * length)  # probs + fused + chain, fp32
    held_ours = 4 * (256 * length * (h // args.kv_heads) + h * length)  # one block of rows per KV group
    (ref_out, ref_s, ref_peak), (our_out, our_s, our_peak) = best["reference"], best["decaf_backend"]
    diff = (ref_out.float() - our_out.float()).abs().max().item()
    print(
        f"shape B={b} H={h}/{args.kv_heads} L={length} d={args.head_dim} layers={args.layers} {args.dtype} on {device}"
    )
    print(f"reference      {ref_s:8.3f} s")
    print(f"decaf_backend  {our_s:8.3f} s")
    print(f"speed ratio (reference / ours): {ref_s / our_s:.1f}x")
    if ref_peak is not None:
        print(
            f"peak CUDA memory: reference {ref_peak / 2**20:.0f} MiB, ours {our_peak / 2**20:.0f} MiB "
            f"(ratio {ref_peak / max(our_peak, 1):.1f}x)"
        )
    else:
        print(
            f"largest working set: reference {held_ref / 2**20:.0f} MiB, ours {held_ours / 2**20:.1f} MiB "
            f"(ratio {held_ref / held_ours:.0f}x)"
        )
    print(f"max abs difference of the rollout rows: {diff:.2e}")


if __name__ == "__main__":
    main()
