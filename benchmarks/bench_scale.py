"""Pre-labeling throughput on the Ray runner with 1 and with 2 workers, in one run: videos/hour each and the ratio.

Each worker does what a `prelabel` worker does for a task, minus the HTTP post: the backend's translation
(`DecafVideoModel.predict_task`, video-track layout) on a task whose video it reads itself from a shared
local-files root (`LOCAL_FILES_DOCUMENT_ROOT`, as `prelabel --local-files-root`), so decoding, DecAF, SAM2
propagation and the conversion to Label Studio results are all timed. The clips are synthetic (a moving disc,
encoded with PyAV), each a little different. The models are built in code with random weights (nothing is
downloaded), through bench_pipeline.build_models.

Each configuration gets its own embedded Ray (so 1 CPU worker has all cores, 2 CPU workers half each) and
models loaded before the clock starts: the time is from the first task handed out to the last result.

    python benchmarks/bench_scale.py                                   # CPU, tiny models, 8 clips of 8×64×96
    python benchmarks/bench_scale.py --size full --frames 64 --height 480 --width 854 \\
        --models-dir /tmp/decaf-bench-models                            # GPUs: 1 GPU, then 2 (or 2 on one)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import FULL_ANSWER_TOKENS, build_models, disc_frames  # noqa: E402

from decaf_backend.overlay import write_video  # noqa: E402
from decaf_backend.scale.runner import RayRunner  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "label_config" / "video_tracks.xml"


@dataclass(frozen=True)
class Models:
    mllm: str
    sam2: str
    model_dir: str
    dtype: str | None = None


class PrelabelWorker:
    """One worker's state, as in decaf_backend.scale.prelabel.Prelabeler but without Label Studio access."""

    def __init__(self, models: Models, device: str) -> None:
        from decaf_backend.backend.model import DecafVideoModel
        from decaf_backend.backend.runtime import Runtime
        from decaf_backend.backend.settings import Settings

        settings = Settings(
            mllm=models.mllm,
            sam2=models.sam2,
            device=device,
            dtype=models.dtype or "",
            model_dir=Path(models.model_dir) / f"worker-{id(self)}",  # nothing shared: every clip is computed
            session_cache_mb=0.0,
            # the clips are local files: read from the root the runner exported to this worker
            local_files_document_root=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT", ""),
        )
        self.runtime = Runtime(settings)
        self.runtime.pipeline()
        self.model = DecafVideoModel(None, CONFIG.read_text(), self.runtime)


def prelabel_clip(worker: PrelabelWorker, task: dict[str, Any]) -> int:
    """The task's prediction, as `prelabel` would post it; returns its number of result items."""
    return len(worker.model.predict_task(task)["result"])


def make_clips(folder: Path, count: int, frames: int, height: int, width: int) -> list[dict[str, Any]]:
    """`count` clips under `folder` (the local-files root) and their video-layout tasks."""
    base = np.stack(list(disc_frames(frames, height, width)))
    tasks = []
    for i in range(count):
        name = f"clip{i:03d}.mp4"
        write_video(folder / name, list(np.roll(base, 5 * i, axis=2)), fps=10.0)
        tasks.append(
            {"id": i + 1, "data": {"video": f"/data/local-files/?d={name}", "prompt": "the red disc"}}
        )
    return tasks


def measure(
    workers: int, tasks: list[dict[str, Any]], models: Models, clips: Path, args: argparse.Namespace
) -> float:
    """Seconds to pre-label every task with `workers` workers, models already loaded."""
    placement: dict[str, Any] = {"workers": workers}
    if args.size == "full":  # a GPU each while there are enough, else they share the one GPU
        enough = args.gpus >= workers
        placement = (
            {"devices": [str(d) for d in range(workers)]}
            if enough
            else {**placement, "gpus_per_worker": 1.0 / workers}
        )
    runner = RayRunner(
        partial(PrelabelWorker, models),
        prelabel_clip,
        retries=0,
        env={"LOCAL_FILES_DOCUMENT_ROOT": str(clips), **args.worker_env},
        init_kwargs={"object_store_memory": 200 * 2**20},
        **placement,
    )
    with runner:
        start = time.perf_counter()
        ready = runner.wait_ready()
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        results = list(runner.map(tasks))
        elapsed = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} clips failed, e.g. {failed[0].error}\n{failed[0].trace}")
    devices = ", ".join(spec.device for spec in runner.specs)
    print(f"{workers} worker(s) [{devices}], {ready} ready after {load_s:.1f} s (model loading, not timed)")
    return elapsed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--clips", type=int, default=8, help="videos to pre-label per configuration")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--models-dir", default=None, help="keep the built checkpoints here for the next run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    args.gpus = torch.cuda.device_count()
    # random weights never stop answering early: cap the answers as bench_pipeline does for the full size
    args.worker_env = {"DECAF_MAX_NEW_TOKENS": str(FULL_ANSWER_TOKENS)} if args.size == "full" else {}
    if args.size == "full" and not args.gpus:
        print("--size full needs a CUDA GPU", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        models_root = Path(args.models_dir) if args.models_dir else work / "models"
        models_root.mkdir(parents=True, exist_ok=True)
        device = torch.device("cuda" if args.size == "full" else "cpu")
        paths = build_models(args.size, models_root, device)
        models = Models(str(paths["mllm"]), str(paths["sam2"]), str(work / "model_dir"), args.dtype)
        clips = work / "clips"
        clips.mkdir()
        tasks = make_clips(clips, args.clips, args.frames, args.height, args.width)
        print(
            f"size={args.size} clips={args.clips} of {args.frames}x{args.height}x{args.width}, gpus={args.gpus}"
        )
        one = measure(1, tasks, models, clips, args)
        two = measure(2, tasks, models, clips, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per_hour = [3600.0 * args.clips / seconds for seconds in (one, two)]
    print(f"1 worker   {one:8.2f} s   {per_hour[0]:10.1f} videos/hour")
    print(f"2 workers  {two:8.2f} s   {per_hour[1]:10.1f} videos/hour")
    print(f"throughput ratio (2 workers / 1 worker): {per_hour[1] / per_hour[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
