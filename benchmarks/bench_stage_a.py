"""SAM2 stage A with N candidate points on one key frame: batched (ours) against one object at a time.

16 key frames of a moving disc; N candidates on a regular grid over key frame 0 (the disc's cells among
them), so NMS keeps several and they are tracked over all key frames. Both runs use the same predictor
and its key-frame feature cache (each run encodes the 16 key frames once, into its own state), after one
untimed warm-up run, so the difference is the batching alone. Wall and process CPU time are both
printed: on a shared machine the CPU time is the steadier figure. The sam2 checkpoint is the
tiny random one unless --sam2 names another (any `load_sam2_predictor` source).

    python benchmarks/bench_stage_a.py --candidates 1 8 46
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import add_row, script_parser
from bench_pipeline import disc_frames

from decaf_backend.points import FramePoints
from decaf_backend.sam2.loading import load_sam2_predictor
from decaf_backend.sam2.tiny import build_tiny_sam2
from decaf_backend.tracking import run_stage_a

ROW_LINE = (
    "candidates {candidates:3d} kept {kept:3d}  one by one {one_by_one_s:8.2f} s  batched {batched_s:8.2f} s  "
    "speedup {speedup:.2f}x  (CPU time {one_by_one_cpu_s:.1f} s vs {batched_cpu_s:.1f} s: {cpu_speedup:.2f}x)  "
    "masks equal {masks_equal}"
)


def grid_candidates(n: int, num_frames: int) -> list[FramePoints | None]:
    """n points on a near-square grid over key frame 0, fused values decreasing in raster order."""
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    ij = [(i, j) for i in range(rows) for j in range(cols)][:n]
    xy = np.array([((j + 0.5) / cols, (i + 0.5) / rows) for i, j in ij], dtype=np.float32)
    values = np.linspace(1.0, 0.8, n, dtype=np.float32)
    return [FramePoints(xy, np.array(ij, np.int64), values)] + [None] * (num_frames - 1)


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 8, 46])
    parser.add_argument("--key-frames", type=int, default=16)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--sam2", default=None, help="default: the tiny random SAM2")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="decaf-stage-a-") as tmp:
        source = args.sam2 or build_tiny_sam2(Path(tmp) / "sam2")
        predictor = load_sam2_predictor(source, device=args.device)
        frames = list(disc_frames(args.key_frames, args.height, args.width))
        print(f"sam2={predictor!r} key frames={len(frames)} {args.width}x{args.height}")
        run_stage_a(predictor, frames, grid_candidates(1, len(frames)))  # warm-up: first-call allocations
        rows = []
        for n in args.candidates:
            points = grid_candidates(n, len(frames))
            times, cpu, results = {}, {}, {}
            for batched in (False, True):
                start, start_cpu = time.perf_counter(), time.process_time()
                results[batched] = run_stage_a(predictor, frames, points, batch_objects=batched)
                if predictor.device.type == "cuda":
                    torch.cuda.synchronize()
                times[batched] = time.perf_counter() - start
                cpu[batched] = time.process_time() - start_cpu
            same = len(results[True].tracklets) == len(results[False].tracklets) and all(
                np.array_equal(a.packed, b.packed)
                for a, b in zip(results[True].tracklets, results[False].tracklets)
            )
            row = {
                "candidates": n,
                "kept": len(results[True].tracklets),
                "one_by_one_s": round(times[False], 3),
                "batched_s": round(times[True], 3),
                "speedup": round(times[False] / max(times[True], 1e-9), 2),
                "one_by_one_cpu_s": round(cpu[False], 3),
                "batched_cpu_s": round(cpu[True], 3),
                "cpu_speedup": round(cpu[False] / max(cpu[True], 1e-9), 2),
                "masks_equal": same,
            }
            add_row(rows, row, ROW_LINE)
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
