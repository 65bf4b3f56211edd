"""Command line: `python -m decaf_backend <command>`; every command prints a clear error instead of a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import DecafError

log = logging.getLogger("decaf_backend")


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .config import DecafConfig
    from .overlay import save_indexed_png, write_overlay
    from .pipeline import DecafPipeline, check_video, normalize_prompt
    from .video import open_video

    prompt = normalize_prompt(args.prompt)  # fail before loading gigabytes of weights
    reader = open_video(args.video)
    check_video(reader)
    config = DecafConfig.from_env(
        num_key_frames=args.key_frames,
        point_threshold=args.point_threshold,
        final_score_threshold=args.final_threshold,
    )
    pipeline = DecafPipeline.from_pretrained(
        args.mllm, args.sam2, device=args.device, dtype=args.dtype, config=config
    )
    with tqdm(total=100, desc="DecAF", unit="%", disable=args.quiet) as bar:

        def progress(stage: str, fraction: float) -> None:
            bar.set_postfix_str(stage)
            bar.update(max(0, round(fraction * 100) - bar.n))

        seg = pipeline.segment(reader, prompt, progress=progress)

    out = Path(args.out)
    mask_dir = out / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    areas = []
    for i, mask in enumerate(seg.masks):
        save_indexed_png(mask_dir / f"{i:05d}.png", mask.astype("uint8"))
        areas.append(int(mask.sum()))
    overlay_path = None
    if args.overlay != "none":
        overlay_path = out / f"overlay.{args.overlay}"
        caption = f"{prompt} → {seg.object_name}" + (" [random weights]" if seg.random_weights else "")
        write_overlay(
            overlay_path,
            reader.iter_frames(),
            [seg.masks],
            points=seg.points,
            caption=caption,
            fps=seg.video.fps or 10.0,
        )
    summary = {
        "prompt": seg.prompt,
        "object_name": seg.object_name,
        "random_weights": seg.random_weights,
        "video": {
            "path": str(args.video),
            "num_frames": seg.video.num_frames,
            "fps": seg.video.fps,
            "width": seg.video.width,
            "height": seg.video.height,
        },
        "key_frame_indices": seg.key_frame_indices,
        "points": seg.points,
        "prompt_frames": seg.prompt_frames,
        "scores": seg.scores,
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
        "mask_area_per_frame": areas,
        "confidence_per_frame": seg.frame_confidence,  # SAM2's signals in [0, 1] (README: what the model thought)
        "masks_dir": str(mask_dir),
        "overlay": str(overlay_path) if overlay_path else None,
        "models": {"mllm": args.mllm, "sam2": args.sam2},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    note = " (random-weight test models: masks are meaningless)" if seg.random_weights else ""
    print(f"{seg.video.num_frames} masks, object '{seg.object_name}', written to {out}{note}")
    return 0


def _make_tiny_models(args: argparse.Namespace) -> int:
    from .tiny_models import make_tiny_models

    paths = make_tiny_models(Path(args.dir), seed=args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m decaf_backend", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser(
        "segment", help="segment the object a text prompt refers to, on every frame of a video"
    )
    seg.add_argument("video", help="video file (mp4/webm/mov/avi/mkv) or a folder of frames")
    seg.add_argument(
        "--prompt", required=True, help='referring expression or question, e.g. "the dog about to jump"'
    )
    seg.add_argument("--out", required=True, help="output folder (masks/, overlay, summary.json)")
    seg.add_argument(
        "--mllm", default=None, help="hub id or local folder (default: $DECAF_MLLM or Qwen2.5-VL-7B)"
    )
    seg.add_argument(
        "--sam2", default=None, help="hub id, local folder or checkpoint (default: $DECAF_SAM2 or SAM2.1-L)"
    )
    seg.add_argument("--device", default=None, help="cuda / mps / cpu (default: best available)")
    seg.add_argument(
        "--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPU, fp32 on CPU"
    )
    seg.add_argument("--key-frames", type=int, default=None, help="key frames given to the MLLM (default 16)")
    seg.add_argument(
        "--point-threshold", type=float, default=None, help="fused-map threshold for points (0.8)"
    )
    seg.add_argument(
        "--final-threshold", type=float, default=None, help="final tracklet score threshold (0.8)"
    )
    seg.add_argument(
        "--overlay", default="mp4", choices=["mp4", "gif", "none"], help="overlay preview format"
    )
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=_segment)

    tiny = sub.add_parser(
        "make-tiny-models", help="build tiny random-weight checkpoints of every MLLM family and SAM2"
    )
    tiny.add_argument(
        "dir", help="output folder (gets qwen2_5_vl/ qwen2_vl/ internvl3/ llava_onevision/ qwen3_vl/ sam2/)"
    )
    tiny.add_argument(
        "--seed", type=int, default=None, help="one seed for all models (default: per-model seeds)"
    )
    tiny.set_defaults(func=_make_tiny_models)

    for module in (
        "decaf_backend.eval.cli",
        "decaf_backend.export",
        "decaf_backend.backend.cli",
        "decaf_backend.quickstart",
        "decaf_backend.scale.prelabel",
    ):
        _register_optional(module, sub)
    return parser


def _register_optional(module: str, sub: argparse._SubParsersAction) -> None:
    import importlib

    try:
        register = importlib.import_module(module).register
    except ImportError as exc:  # a missing optional extra must not break the core commands
        log.debug("commands of %s unavailable: %s", module, exc)
        return
    register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except DecafError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
