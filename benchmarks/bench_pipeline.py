"""DecAF end to end (DecafPipeline.segment) on a synthetic video, plus the rollout against the reference's.

The video is a red disc moving over a textured background, encoded with PyAV (H.264). The models are built
in code with random weights (nothing is downloaded), written to disk in their real formats and loaded
through the production loaders (`load_mllm`, `load_sam2_predictor`), so loading and every stage run the
path the CLI and the Label Studio backend take:

  --size full  Qwen2.5-VL with the published 7B architecture (bf16, ~16 GB) and SAM2.1 hiera-large (the sam2
               package's own config), random init. Needs a CUDA GPU: building a random 7B model on a CPU is
               not supported here. Weights and tokenizer are random stand-ins (byte-level tokenizer, as in
               decaf_backend.mllm.tiny), so text prompts are a few hundred tokens longer than with the real
               tokenizer; visual tokens, layer shapes and the rollout are the real ones.
  --size tiny  the `make-tiny-models` checkpoints, for a CPU smoke run.

Baseline, measured in the same process: the Q/K of the rollout layers are captured from one prefill of the
video-level object prompt on the same key frames; the reference's literal rollout (full fp32 probabilities
per layer and the L×L×L matrix chain, `bench_rollout.reference_rollout`) and ours
(`rollout_last_row_from_qk`, blockwise) run on them. Both times, the speed ratio and the max abs difference
are printed.

    python benchmarks/bench_pipeline.py --size tiny --frames 6 --height 64 --width 96     # CPU smoke run
    python benchmarks/bench_pipeline.py --size full --models-dir /tmp/decaf-bench-models  # GPU, 64×854×480
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_rollout import reference_rollout, timed

from decaf_backend.config import DecafConfig
from decaf_backend.mllm import prompts
from decaf_backend.mllm.loading import RANDOM_WEIGHTS_MARKER
from decaf_backend.overlay import write_video
from decaf_backend.pipeline import DecafPipeline
from decaf_backend.rollout import rollout_last_row_from_qk
from decaf_backend.types import Click
from decaf_backend.video import key_frame_indices, open_video

# Qwen2.5-VL-7B-Instruct's published config.json (text model and vision tower)
QWEN25_VL_7B_TEXT: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6,
    "use_sliding_window": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
}
QWEN25_VL_7B_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "out_hidden_size": 3584,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}
SAM2_LARGE = "facebook/sam2.1-hiera-large"
FULL_ANSWER_TOKENS = 8
READY = "BENCH_READY"  # written last into a model folder, so a half-written one is rebuilt


# ------------------------------------------------------------------------------------------------ video


def disc_radius(height: int, width: int) -> int:
    return max(4, min(height, width) // 6)


def disc_centre(i: int, num: int, height: int, width: int) -> tuple[float, float]:
    """(x, y) in pixels of the disc on frame i of num: left to right at mid-height."""
    radius = disc_radius(height, width)
    return radius + (width - 2 * radius) * i / max(1, num - 1), height / 2


def disc_frames(num: int, height: int, width: int) -> Iterator[np.ndarray]:
    """A red disc moving left to right over a fixed textured background (frames made one at a time)."""
    rng = np.random.default_rng(0)
    background = (
        rng.integers(0, 40, (height, width, 3)) + np.linspace(40, 120, width)[None, :, None]
    ).astype(np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = disc_radius(height, width)
    for i in range(num):
        cx, cy = disc_centre(i, num, height, width)
        frame = background.copy()
        frame[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = (220, 30, 30)
        yield frame


# ------------------------------------------------------------------------------------------------ models


def build_full_qwen(
    out: Path, device: torch.device, text: dict | None = None, vision: dict | None = None
) -> Path:
    """A random Qwen2.5-VL (default: the 7B architecture) in bf16, saved like a hub checkpoint.

    Tokenizer, processor and chat template are the tiny builder's (offline, byte level); only the model
    config differs. The model is created directly on `device` in bf16, so a 7B model never needs fp32 RAM.
    `text`/`vision` override the architecture (used to check this builder on a CPU with a small model).
    """
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from decaf_backend.mllm.tiny import _processor, byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    tid = tokenizer.convert_tokens_to_ids
    eos, pad = tid("<|im_end|>"), tid("<|endoftext|>")
    text_cfg = dict(text or QWEN25_VL_7B_TEXT, eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    config = Qwen2_5_VLConfig(
        text_config=text_cfg,
        vision_config=dict(vision or QWEN25_VL_7B_VISION),
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    model.config.decaf_random_weights = True
    # answers limited to a-z and end-of-turn: the byte tokenizer cannot decode the other 151k ids
    allowed = set(range(ord("a"), ord("z") + 1)) | {eos}
    model.generation_config = GenerationConfig(
        eos_token_id=eos,
        pad_token_id=pad,
        do_sample=False,
        suppress_tokens=[i for i in range(config.text_config.vocab_size) if i not in allowed],
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    _processor("qwen2_5_vl", tokenizer).save_pretrained(out)
    (out / RANDOM_WEIGHTS_MARKER).write_text("Random-weight Qwen2.5-VL-7B architecture (benchmark only).\n")
    del model
    _free_memory(device)
    return out


def build_full_sam2(out: Path) -> Path:
    """SAM2.1 hiera-large from the sam2 package's config, random init, as `config.yaml` + `{"model": ...}`."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from decaf_backend.sam2.loading import HUB_MODELS, load_sam2_config
    from decaf_backend.sam2.tiny import TINY_OBJECT_SCORE_BIAS

    cfg = load_sam2_config(HUB_MODELS[SAM2_LARGE][0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = instantiate(cfg.model, _recursive_=True)
    with torch.no_grad():  # as the tiny builder: keep the random masks instead of "no object" everywhere
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(TINY_OBJECT_SCORE_BIAS)
    cfg.random_weights = True
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    torch.save({"model": model.state_dict()}, out / "sam2.1_hiera_large_random.pt")
    return out


def build_models(size: str, root: Path, device: torch.device) -> dict[str, Path]:
    """Model folders for `size`, reused when a previous run under the same root finished them."""
    marker = root / f"{size}.{READY}"
    if size == "tiny":
        paths = {"mllm": root / "tiny" / "qwen2_5_vl", "sam2": root / "tiny" / "sam2"}
    else:
        paths = {"mllm": root / "full" / "qwen2_5_vl_7b", "sam2": root / "full" / "sam2.1_hiera_large"}
    if marker.is_file():
        return paths
    if size == "tiny":
        from decaf_backend.tiny_models import make_tiny_models

        made = make_tiny_models(root / "tiny")
        paths = {"mllm": made["qwen2_5_vl"], "sam2": made["sam2"]}
    else:
        build_full_qwen(paths["mllm"], device)
        build_full_sam2(paths["sam2"])
    marker.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths


# ------------------------------------------------------------------------------------------------ baseline


def capture_object_qk(pipeline: DecafPipeline, key_frames: list[np.ndarray], prompt: str):
    """Q/K of the rollout layers from one prefill of the video-level object prompt, as the adapter builds it.

    Goes through the adapter's own prompt and input builders (its cached vision features included), so
    the token sequence is exactly the one `segment` rolled out.
    """
    adapter = pipeline.mllm
    question = prompts.object_class_prompt(prompt, adapter.config.prompt_version)
    return adapter.video_prompt_qk(key_frames, question)


def compare_rollouts(
    qs, ks, visual_range, block_rows: int, device: torch.device, repeats: int = 3
) -> dict[str, float]:
    """Best of `repeats` runs of each (as bench_rollout), and the max abs difference of their results."""
    with torch.inference_mode():
        ref = [timed(lambda: reference_rollout(qs, ks, visual_range), device) for _ in range(repeats)]
        ours = [
            timed(lambda: rollout_last_row_from_qk(qs, ks, visual_range, block_rows=block_rows), device)
            for _ in range(repeats)
        ]
    (ref_out, ref_s, ref_peak), (our_out, our_s, our_peak) = (
        min(ref, key=lambda r: r[1]),
        min(ours, key=lambda r: r[1]),
    )
    diff = (ref_out.float() - our_out.float()).abs().max().item()
    return {"ref_s": ref_s, "our_s": our_s, "ref_peak": ref_peak, "our_peak": our_peak, "diff": diff}


# ------------------------------------------------------------------------------------------------ helpers


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--prompt", default="the red ball moving to the right")
    parser.add_argument(
        "--device", default=None, help="default: cuda for --size full, else the best available"
    )
    parser.add_argument(
        "--dtype", default=None, help="default: bf16 on GPU, fp32 on CPU (production defaults)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="cap on each generated answer (DecafConfig.max_new_tokens). Random weights never stop early, so "
        f"--size full defaults to {FULL_ANSWER_TOKENS} (about a real short answer, e.g. 'red ball'); "
        "--size tiny keeps the production default, for which its seeds were picked",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rollout comparison: best of this many runs")
    parser.add_argument("--warmup", type=int, default=0, help="untimed segment runs before the timed one")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="keep the built checkpoints here and reuse them on later runs (default: a temporary folder)",
    )
    return parser.parse_args(argv)


def load_pipeline(args: argparse.Namespace, device: torch.device, models_root: Path) -> DecafPipeline:
    """Build (or reuse) the checkpoints, then load them through the production loaders."""
    start = time.perf_counter()
    paths = build_models(args.size, models_root, device)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    answer_tokens = args.max_new_tokens or (FULL_ANSWER_TOKENS if args.size == "full" else None)
    overrides = {} if answer_tokens is None else {"max_new_tokens": answer_tokens}
    pipeline = DecafPipeline.from_pretrained(
        mllm=str(paths["mllm"]),
        sam2=str(paths["sam2"]),
        device=str(device),
        dtype=args.dtype,
        config=DecafConfig.from_env(**overrides),
    )
    _sync(device)
    load_s = time.perf_counter() - start
    dtype = str(pipeline.mllm.model.dtype).removeprefix("torch.")
    print(f"models: size={args.size} mllm={paths['mllm']} sam2={paths['sam2']} (random weights)")
    print(f"device: {device} mllm dtype: {dtype} max new tokens: {pipeline.config.max_new_tokens}")
    print(f"build models {build_s:8.2f} s   load models {load_s:8.2f} s")
    return pipeline


def run_segment(pipeline: DecafPipeline, video: Path, args: argparse.Namespace, device: torch.device) -> Any:
    """One timed `segment` (after `--warmup` untimed ones): stage timings and peak memory."""
    for _ in range(args.warmup):
        pipeline.segment(video, args.prompt)
    _free_memory(device)
    resident = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    start = time.perf_counter()
    seg = pipeline.segment(video, args.prompt)
    _sync(device)
    total_s = time.perf_counter() - start
    info = seg.video
    print(
        f"video: {info.num_frames} frames {info.width}x{info.height}, {len(seg.key_frame_indices)} key frames"
    )
    for stage, seconds in seg.timings.items():
        print(f"stage {stage:<16} {seconds:8.3f} s")
    print(f"segment total          {total_s:8.3f} s ({total_s / info.num_frames * 1000:.1f} ms/frame)")
    masked = sum(int(m.any()) for m in seg.masks)
    print(
        f"result: object {seg.object_name!r}, {len(seg.points)} points, prompt frames {seg.prompt_frames}, "
        f"masked frames {masked}/{info.num_frames}"
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        print(
            f"peak CUDA memory: {_mib(peak)} (models resident {_mib(resident)}, "
            f"segment on top {_mib(peak - resident)})"
        )
    else:
        print(f"peak RSS: {_mib(_peak_rss())} (whole process, model building included)")
    if not seg.prompt_frames:
        print("note: random attention left no SAM2 prompt, so stage sam2 did no tracking; see refine below")
    return seg


def run_refine(pipeline: DecafPipeline, seg: Any, device: torch.device) -> None:
    """SAM2 over the whole video whatever the random MLLM found: one click on the disc, mid-video."""
    info = seg.video
    middle = info.num_frames // 2
    cx, cy = disc_centre(middle, info.num_frames, info.height, info.width)
    start = time.perf_counter()
    refined = pipeline.refine(seg, clicks=[Click(middle, cx, cy)])
    _sync(device)
    print(f"refine (1 click, whole video) {time.perf_counter() - start:8.3f} s")
    if refined.session is not None:  # release the SAM2 state and the video before the baseline
        refined.session.frames.close()


def run_baseline(
    pipeline: DecafPipeline, video: Path, prompt: str, device: torch.device, repeats: int
) -> None:
    """The reference's rollout against ours on the Q/K of the same video-level object prompt."""
    reader = open_video(video)
    key_frames = reader.read_frames(key_frame_indices(len(reader), pipeline.config.num_key_frames))
    reader.close()
    qs, ks, visual_range = capture_object_qk(pipeline, key_frames, prompt)
    b, h, length, d = qs[0].shape
    print(
        f"rollout baseline on the video-level object prompt: layers {pipeline.mllm.rollout_start_layer}.."
        f"{pipeline.mllm.num_layers - 1} ({len(qs)}), B={b} H={h}/{ks[0].shape[1]} L={length} d={d} "
        f"visual tokens {visual_range[0]}..{visual_range[1]} {str(qs[0].dtype).removeprefix('torch.')}"
    )
    r = compare_rollouts(qs, ks, visual_range, pipeline.config.rollout_block_rows, device, max(1, repeats))
    print(f"reference      {r['ref_s']:8.3f} s")
    print(f"decaf_backend  {r['our_s']:8.3f} s")
    print(f"speed ratio (reference / ours): {r['ref_s'] / max(r['our_s'], 1e-9):.1f}x")
    if r["ref_peak"] is not None:
        print(
            f"rollout peak CUDA memory (models included): reference {_mib(r['ref_peak'])}, "
            f"ours {_mib(r['our_peak'])}"
        )
    print(f"max abs difference of the rollout rows: {r['diff']:.2e}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.size == "full" and not torch.cuda.is_available():
        print(
            "--size full needs a CUDA GPU: the random Qwen2.5-VL-7B alone is ~16 GB in bf16 (plus "
            "SAM2.1-large and activations) and is built directly on the GPU; this machine has no CUDA "
            "device. "
            "Use --size tiny for a CPU smoke run.",
            file=sys.stderr,
        )
        return 2
    from decaf_backend.mllm import resolve_device

    device = resolve_device(args.device or ("cuda" if args.size == "full" else None))
    if args.size == "full" and device.type != "cuda":
        print("--size full runs on CUDA only (--device must be cuda or cuda:N)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="decaf-bench-") as tmp:
        work = Path(tmp)
        video = write_video(work / "disc.mp4", disc_frames(args.frames, args.height, args.width), fps=10)
        pipeline = load_pipeline(args, device, args.models_dir or work / "models")
        seg = run_segment(pipeline, video, args, device)
        run_refine(pipeline, seg, device)
        run_baseline(pipeline, video, seg.prompt, device, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
