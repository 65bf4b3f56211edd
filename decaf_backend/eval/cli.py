"""`python -m decaf_backend evaluate`: DecAF on every expression of a benchmark split, J / F / J&F table."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DecafError
from .checks import check_dataset
from .datasets import ALIASES, DATASETS, RVOSDataset, load_dataset
from .pool import default_devices
from .report import format_failures, format_table
from .runner import EvaluationRunner
from .segmenters import OracleFactory, OracleSegmenter, PipelineFactory, PngFolderSegmenter, Segmenter

EXIT_CODES = "exit code: 0 every expression scored, 1 some failed (listed at the end), 2 bad input"


def _segmenter_factory(
    args: argparse.Namespace, dataset: RVOSDataset, overrides: dict[str, Any]
) -> tuple[Callable[[], Segmenter], str]:
    """(picklable segmenter factory, what the cache signature calls it); bad choices are refused here."""
    if args.oracle and args.predictions:
        raise DecafError("--oracle and --predictions exclude each other")
    if args.oracle:
        OracleSegmenter(dataset)  # refuses a split without ground truth
        return OracleFactory(dataset.name, str(dataset.root), dataset.split), "oracle"
    if args.predictions:
        PngFolderSegmenter(args.predictions)  # refuses a missing folder
        predictions = functools.partial(PngFolderSegmenter, args.predictions)
        return predictions, f"png:{Path(args.predictions).resolve()}"
    return PipelineFactory(args.mllm, args.sam2, args.device, args.dtype, overrides), "decaf"


def _evaluate(args: argparse.Namespace) -> int:
    # bad input is refused before anything is loaded or written: the oracle needs ground truth, and the
    # whole split must parse, with every listed frame and annotation on disk
    dataset = load_dataset(args.dataset, args.root, args.split)
    overrides = {k: v for k, v in (("num_key_frames", args.key_frames),) if v is not None}
    factory, source = _segmenter_factory(args, dataset, overrides)
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    workers = args.workers or (len(devices) if devices else 1)
    if workers > 1 and not devices:  # the models want a GPU each; the oracle and PNGs need none
        use_gpus = isinstance(factory, PipelineFactory) and args.device != "cpu"
        devices = default_devices(workers, use_gpus)
    check = check_dataset(dataset)
    check.raise_if_any(dataset)
    if args.check_only:
        print(f"{dataset.name} / {dataset.split}: {len(check.expressions)} expressions, {check.num_videos} videos, "
              f"{check.num_frames} frames; every listed frame and annotation is there")  # fmt: skip
        return 0

    signature = {"segmenter": source, "mllm": args.mllm, "sam2": args.sam2, "config": overrides or None}
    out = Path(args.out) if args.out else Path("outputs") / "eval" / f"{dataset.name}_{dataset.split}"
    runner = EvaluationRunner(
        dataset,
        out,
        save_masks=args.save_masks,
        overlay=args.overlay,
        signature=signature,
        restart=args.restart,
    )
    report = runner.run(factory=factory, limit=args.limit, workers=workers, devices=devices,
                        progress=not args.quiet, expressions=check.expressions)  # fmt: skip
    print(format_table(report))
    print(f"per-expression results: {report.csv_path}")
    if report.failed:
        print(format_failures(report))
    return 1 if report.failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `evaluate` to the `python -m decaf_backend` parser."""
    names = ", ".join([*DATASETS, *ALIASES])
    p = subparsers.add_parser(
        "evaluate",
        help="run DecAF on a referring/reasoning VOS benchmark and report J / F / J&F",
        description="Segments every expression of a benchmark split (resumable: finished expressions are "
        "cached under OUT/cache and skipped on a rerun), writes OUT/results.csv and prints the table. "
        "Splits without public ground truth get OUT/submission/ (+ submission.zip) in the server's layout. "
        "The dataset is checked first (expression files, listed frames, annotations): every problem is "
        "listed at once, before any model loads.",
        epilog=EXIT_CODES,
    )
    p.add_argument("--dataset", required=True, help=f"benchmark: {names}")
    p.add_argument("--root", required=True, help="the benchmark's folder (as published)")
    p.add_argument("--split", default=None, help="split (defaults: ref-youtube-vos valid, ref-davis17 valid, "
                   "mevis valid_u, revos valid, reasonvos test)")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help="only the first N expressions")
    p.add_argument("--out", default=None, help="output folder (default outputs/eval/<dataset>_<split>)")
    p.add_argument(
        "--workers", type=int, default=None,
        help="Ray workers, each loading the models once on its own GPU (default: one per --devices entry, "
        "else 1 in this process); CPU workers where no GPU is visible",
    )  # fmt: skip
    p.add_argument(
        "--devices", default=None,
        help="GPU ids (or 'cpu') for the workers, e.g. 0,1,2,3 (default: the visible GPUs in turn)",
    )  # fmt: skip
    p.add_argument(
        "--mllm", default=None, help="hub id or local folder (default: $DECAF_MLLM or Qwen2.5-VL-7B)"
    )
    p.add_argument(
        "--sam2", default=None, help="hub id, folder or checkpoint (default: $DECAF_SAM2 or SAM2.1-L)"
    )
    p.add_argument("--device", default=None, help="cuda / cpu (default: best available)")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"])
    p.add_argument("--key-frames", type=int, default=None, help="key frames given to the MLLM (default 16)")
    p.add_argument(
        "--save-masks", action="store_true", help="also write OUT/predictions/<video>/<exp>/<frame>.png"
    )
    p.add_argument("--overlay", choices=["mp4", "gif"], default=None, help="write an overlay per expression")
    p.add_argument(
        "--oracle",
        action="store_true",
        help="score the ground truth itself (J, F, J&F 100: the dataset and scoring are sound)",
    )
    p.add_argument(
        "--check-only",
        action="store_true",
        help="only check the dataset (files, frames, annotations) and stop",
    )
    p.add_argument(
        "--predictions", default=None, help="score existing PNGs <DIR>/<video>/<exp_id>/<frame>.png"
    )
    p.add_argument("--restart", action="store_true", help="forget cached results in OUT and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)
