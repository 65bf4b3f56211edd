"""Host memory of the part of DecAF that grows with the video: SAM2 stage B over every frame (spec §9.4).

For each frame count, a fresh process writes a small-resolution video (frames generated and encoded one at
a time), opens it with the lazy reader and propagates one prompt mask from the middle frame to both ends
with the tiny random SAM2, as `DecafPipeline.segment` does after the MLLM (which only ever sees the 16 key
frames). Frames are decoded on demand (bounded frame cache), SAM2 reads them through `Sam2Frames` (bounded
cache), the stage-B state forgets per-frame memories SAM2 will not read again, and the masks are kept
bit-packed and compressed. Printed per frame count: peak RSS of the process, RSS before stage B, the
growth, and the growth in units of one decoded frame (H×W×3 bytes).

    python benchmarks/bench_long_video.py --frames 300 1000 3000 --height 48 --width 64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import add_row, script_parser
from bench_pipeline import disc_centre, disc_frames, disc_radius

ROW_LINE = (
    "frames {frames:5d}  peak RSS {peak_rss_mib:8.1f} MiB  before stage B {rss_before_mib:8.1f} MiB  growth "
    "{growth_mib:6.1f} MiB ({growth_in_frames:.0f} frames of {size})  masks {masks_kib:.0f} KiB  {seconds:.0f} s"
)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def one_run(frames: int, height: int, width: int, work: Path) -> dict:
    from decaf_backend.overlay import write_video
    from decaf_backend.sam2.loading import load_sam2_predictor
    from decaf_backend.sam2.tiny import build_tiny_sam2
    from decaf_backend.tracking import run_stage_b
    from decaf_backend.video import open_video

    sam2_dir = work / "sam2"
    if not (sam2_dir / "config.yaml").is_file():
        build_tiny_sam2(sam2_dir)
    predictor = load_sam2_predictor(sam2_dir, device="cpu")
    video = write_video(work / f"disc_{frames}.mp4", disc_frames(frames, height, width), fps=25)
    reader = open_video(video)
    middle = frames // 2
    cx, cy = disc_centre(middle, frames, height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    prompt = (xx - cx) ** 2 + (yy - cy) ** 2 <= disc_radius(height, width) ** 2
    warm = run_stage_b(predictor, [reader[0], reader[1]], [0], [prompt])  # first-call allocations
    del warm
    before = rss()
    start = time.perf_counter()
    masks = run_stage_b(predictor, reader, [middle], [prompt])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    covered = sum(1 for m in masks if m.any())
    reader.close()
    frame_bytes = height * width * 3
    return {
        "frames": frames,
        "size": f"{width}x{height}",
        "rss_before_mib": round(before / 2**20, 1),
        "peak_rss_mib": round(peak / 2**20, 1),
        "growth_mib": round((peak - before) / 2**20, 1),
        "growth_in_frames": round((peak - before) / frame_bytes, 1),
        "masks_kib": round(masks.nbytes / 1024, 1),
        "frames_with_mask": covered,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--work", type=Path, default=None, help="folder for the model and videos")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="decaf-long-") as tmp:
        work = args.work or Path(tmp)
        if args.one:
            print(json.dumps(one_run(args.frames[0], args.height, args.width, work)))
            return
        rows = []
        for n in args.frames:
            child = [sys.executable, __file__, "--one", "--frames", str(n), "--height", str(args.height)]
            child += ["--width", str(args.width), "--work", str(work)]
            out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
            add_row(rows, json.loads(out.strip().splitlines()[-1]), ROW_LINE)
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
