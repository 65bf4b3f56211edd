"""Correction latency while a pre-annotation runs, against the latency when idle, as a ratio from one run.

The backend's own layers on the real pipeline with the tiny random models (`make-tiny-models`, built here or read
from --models-dir): a starting segmentation of video A, then corrections on it (one click more each time, as an
annotator clicks) through the interactive lane (`Lanes.interactive` + `CorrectionSessions.correct`):
- idle: nothing else runs;
- busy: a pre-annotation of video B (`DecafPipeline.segment` with the lane's `batch_checkpoint` between stages)
  runs in another thread during every correction.
Printed: the median latencies, their ratio, the pre-annotation's own duration (what a correction queued behind it
waited before the lanes), and how often the pre-annotation paused for a correction.

    python benchmarks/bench_lanes.py --frames 8 --height 64 --width 96 --clicks 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from decaf_backend.backend.corrections import CorrectionSessions
from decaf_backend.backend.lanes import Lanes
from decaf_backend.overlay import write_video
from decaf_backend.pipeline import DecafPipeline
from decaf_backend.types import Click
from decaf_backend.video import open_video


def disc_frames(n: int, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = rng.integers(0, 60, (n, height, width, 3)).astype(np.uint8)
    r = max(4, min(height, width) // 6)
    for i in range(n):
        cx = r + (width - 2 * r) * i / max(1, n - 1)
        frames[i][(xx - cx) ** 2 + (yy - height / 2) ** 2 <= r * r] = (220, 30, 30)
    return frames


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--clicks", type=int, default=4, help="corrections measured per condition")
    parser.add_argument("--models-dir", type=Path, default=None, help="tiny models made by make-tiny-models")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-lanes-") as tmp:
        work = Path(tmp)
        models = args.models_dir
        if models is None:
            from decaf_backend.tiny_models import make_tiny_models

            made = make_tiny_models(work / "models")
            mllm, sam2 = made["qwen2_5_vl"], made["sam2"]
        else:
            mllm, sam2 = models / "qwen2_5_vl", models / "sam2"
        pipeline = DecafPipeline.from_pretrained(str(mllm), str(sam2), device=args.device)
        video_a = open_video(
            write_video(work / "a.mp4", disc_frames(args.frames, args.height, args.width, 0))
        )
        video_b = write_video(work / "b.mp4", disc_frames(args.frames, args.height, args.width, 1))
        lanes = Lanes()
        sessions = CorrectionSessions(1 << 34, 2 << 20, work / "answers")
        start = pipeline.segment(video_a, "the red disc")
        sessions.keep_starting("a", start)
        clicks: list[Click] = []

        def correct() -> float:
            rng = np.random.default_rng(len(clicks))
            frame = int(rng.integers(0, args.frames))
            clicks.append(
                Click(frame, float(rng.uniform(1, args.width - 1)), float(rng.uniform(1, args.height - 1)))
            )
            t0 = time.perf_counter()
            with lanes.interactive():
                sessions.correct(pipeline, "a", start, list(clicks), video_a)
            return time.perf_counter() - t0

        correct()  # warm-up (first propagation of the starting state)
        idle = [correct() for _ in range(args.clicks)]

        prelabel_s: list[float] = []
        busy: list[float] = []
        for _ in range(args.clicks):
            running, done = threading.Event(), threading.Event()

            def prelabel(running: threading.Event = running, done: threading.Event = done) -> None:
                reader = open_video(video_b)
                t0 = time.perf_counter()

                def checkpoint(stage: str, fraction: float) -> None:
                    running.set()
                    lanes.batch_checkpoint(stage, fraction)

                pipeline.segment(reader, "the red disc", checkpoint)
                prelabel_s.append(time.perf_counter() - t0)
                reader.close()
                done.set()

            thread = threading.Thread(target=prelabel)
            thread.start()
            running.wait()  # the pre-annotation is under way (past its first stage)
            busy.append(correct())
            busy_overlap = not done.is_set()
            thread.join()
            if not busy_overlap:
                print("note: the pre-annotation ended before the correction did", file=sys.stderr)

    idle_s, busy_s = statistics.median(idle), statistics.median(busy)
    print(f"video: {args.frames} frames {args.width}x{args.height}, tiny random models, device {args.device}")
    print(f"correction latency idle: median {idle_s * 1000:.1f} ms over {len(idle)} clicks")
    print(
        f"correction latency while a pre-annotation runs: median {busy_s * 1000:.1f} ms over {len(busy)} clicks"
    )
    print(f"ratio busy/idle: {busy_s / idle_s:.2f}")
    print(f"pre-annotation duration: median {statistics.median(prelabel_s) * 1000:.1f} ms "
          f"(a correction queued behind it would have waited up to this); pauses for corrections: {lanes.batch_pauses}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
