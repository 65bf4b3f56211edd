"""The whole DecAF pass against the reference's own computation, stage by stage, in one process.

Same video (a red disc over texture, H.264), same prompt, same loaded models, run twice:

  reference  the reference's computation reproduced literally (spec §2, §4, §9, §14.1): per prompt, HF
             `generate` up to `max_new_tokens` with eager attention, background prompts generating too,
             the vision tower run inside every prompt, and on each rollout layer of the prefill the fp32
             probabilities of every head (B, H, L, L), the head-weighted L×L matrix and the L×L×L chain
             R ← Ã_l·R, folded inside the layer loop as the reference's custom attention class does. SAM2
             stage A adds the candidates one by one and sam2 caches one frame's image features.
             That is `--attentions folded` (the default: cheaper than the reference's own run, never
             dearer). `--attentions kept` takes `output_attentions=True` literally: HF holds every layer's
             (B, H, L, L) probabilities of the prefill until generation ends (28 × 1.2 GB at L = 3281, more
             than a 24 GB machine has; run it at fewer frames and with `--frame-batch 1`).
  ours       decaf_backend as the pipeline runs it: one prefill with post-RoPE Q/K capture (sdpa),
             blockwise last-row rollout, prefill-only background prompts, cached vision features, short
             answers from the prefill's KV cache; SAM2 stage A batched over a key frame's candidates.

Per stage (MLLM object prompts, background prompts, rollout — the part of both MLLM stages spent in the
rollout —, fusion, SAM2 stage A, stage B): wall time and peak memory above the stage's start (CUDA: the
allocator's peak; CPU: resident set size sampled every 2 ms after returning freed heap to the OS), and the
process CPU time (steadier than wall time on a shared machine). Then
the largest differences of the outputs (rollout rows, fused map, points, masks). The last line is one JSON
object.

Sizes:
  tiny      the `make-tiny-models` checkpoints (CPU smoke run).
  narrow7b  a random Qwen2.5-VL with the 7B model's depth, head counts and visual token counts (28 layers,
            28 query / 4 key-value heads, 16 frames of 854×480, so L is the real one: 2912 video tokens,
            1456 per frame prompt) but head dim 16 (hidden 448) and a 2-block vision tower, fp32 on CPU.
  full      random Qwen2.5-VL-7B (bf16) and SAM2.1-L (bench_pipeline's builders); CUDA only.

    python benchmarks/bench_reference.py --size tiny --frames 6 --height 64 --width 96
    python benchmarks/bench_reference.py --size narrow7b                  # CPU, 16 frames 854×480
    python benchmarks/bench_reference.py --size full --models-dir /tmp/m  # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_pipeline import QWEN25_VL_7B_TEXT, build_full_qwen, build_models, disc_frames
from bench_rollout import reference_layer_step

from decaf_backend.config import DecafConfig
from decaf_backend.fusion import fuse_maps, rollout_to_map
from decaf_backend.mllm import prompts
from decaf_backend.mllm.qk_capture import find_decoder_attentions
from decaf_backend.mllm.qwen import resize_frame
from decaf_backend.overlay import write_video
from decaf_backend.pipeline import DecafPipeline
from decaf_backend.points import candidate_points
from decaf_backend.sam2 import predictor as sam2_predictor
from decaf_backend.tracking import ac_scores, run_stage_a, run_stage_b, select_final_prompts
from decaf_backend.types import AttentionResult
from decaf_backend.video import key_frame_indices, open_video

# the 7B text model's depth and heads, narrow: head dim 16 (mrope sections sum to 8), hidden 28 × 16
NARROW7B_TEXT: dict[str, Any] = dict(
    QWEN25_VL_7B_TEXT,
    vocab_size=512,  # the byte-level tokenizer's ids (< 263); 152k rows would only cost memory and time
    hidden_size=448,
    intermediate_size=896,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
)
NARROW7B_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "in_channels": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "out_hidden_size": 448,
    "fullatt_block_indexes": [1],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}
STAGES = ("mllm_object", "mllm_background", "rollout", "fusion", "sam2_stage_a", "sam2_stage_b")


# ------------------------------------------------------------------------------------------------ memory


class PeakMemory:
    """Peak memory above the level at `start()`: CUDA allocator peak, else sampled resident set size."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
        self._stop = threading.Event()
        self._base = self._peak = 0
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)  # freed heap back to the OS, so reuse of old pages is not hidden
        self._base = self._peak = self.rss()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, self.rss())

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self._base
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self.rss())
        return self._peak - self._base


class StageMeter:
    """Wall time and peak memory per stage; `rollout` accumulates time spent inside the rollout."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.cpu_seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.peak: dict[str, int] = dict.fromkeys(STAGES, 0)
        self._memory = PeakMemory(device)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._memory.start()
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start
            self.cpu_seconds[name] += time.process_time() - start_cpu
            self.peak[name] = max(self.peak[name], self._memory.stop())

    def add_rollout(self, seconds: float) -> None:
        self.seconds["rollout"] += seconds

    @property
    def mllm_seconds(self) -> float:
        return self.seconds["mllm_object"] + self.seconds["mllm_background"]

    @property
    def mllm_cpu_seconds(self) -> float:
        return self.cpu_seconds["mllm_object"] + self.cpu_seconds["mllm_background"]

    @property
    def mllm_peak(self) -> int:
        return max(self.peak["mllm_object"], self.peak["mllm_background"])

    @property
    def sam2_seconds(self) -> float:
        return self.seconds["sam2_stage_a"] + self.seconds["sam2_stage_b"]


@contextlib.contextmanager
def timing_our_rollout(meter: StageMeter) -> Iterator[None]:
    """Count the time our adapter spends in `rollout_last_row_from_qk` (it runs inside the MLLM stages)."""
    import decaf_backend.mllm.qwen as qwen

    original = qwen.rollout_last_row_from_qk

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            meter.add_rollout(time.perf_counter() - start)

    qwen.rollout_last_row_from_qk = timed
    try:
        yield
    finally:
        qwen.rollout_last_row_from_qk = original


# ------------------------------------------------------------------------------------------------ reference


class LiteralReference:
    """The reference's MLLM computation on our loaded Qwen2.5-VL (see the module docstring)."""

    def __init__(self, pipeline: DecafPipeline, meter: StageMeter, keep_attentions: bool = False) -> None:
        self.adapter = pipeline.mllm
        self.keep_attentions = keep_attentions
        self.model = pipeline.mllm.model
        self.config = pipeline.config
        self.meter = meter
        self.rollout_modules = {
            id(m): i
            for i, m in enumerate(find_decoder_attentions(self.model))
            if i in self.adapter.rollout_layers
        }
        self.visual_range: tuple[int, int] = (0, 0)
        self.chain: torch.Tensor | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Eager attention everywhere; on rollout layers of a prefill, fold the fp32 probabilities."""
        import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl as modeling

        eager = modeling.eager_attention_forward
        previous = self.model.config._attn_implementation

        def literal_attention(module: Any, query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any):
            out, weights = eager(module, query, key, *args, **kwargs)
            if id(module) in self.rollout_modules and query.shape[2] > 1:  # prefill only (§4)
                start = time.perf_counter()
                probs = weights if weights.dtype == torch.float32 else self._fp32_probs(module, query, key)
                self.chain = reference_layer_step(probs, self.visual_range, self.chain)
                self.meter.add_rollout(time.perf_counter() - start)
            return out, weights

        self.model.set_attn_implementation("eager")
        if not self.keep_attentions:
            modeling.eager_attention_forward = literal_attention
        try:
            yield
        finally:
            modeling.eager_attention_forward = eager
            self.model.set_attn_implementation(previous)

    @staticmethod
    def _fp32_probs(module: Any, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """A bf16 model's probabilities recomputed in fp32 from its post-RoPE Q/K, as the reference does."""
        key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        scores = query.float() @ key.float().transpose(-1, -2) * module.scaling
        length = scores.shape[-1]
        causal = torch.ones(length, length, dtype=torch.bool, device=scores.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)

    def prompt_set(self, frames: list[np.ndarray], question: str) -> tuple[AttentionResult, AttentionResult]:
        return self._video_prompt(frames, question), self._frame_prompts(frames, question)

    def _generate(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        ids = inputs["input_ids"]
        token = self.adapter.video_token_id if "video_grid_thw" in inputs else self.adapter.image_token_id
        positions = torch.nonzero(ids[0] == token).flatten()
        self.visual_range, self.chain = (int(positions[0]), int(positions[-1])), None
        with torch.inference_mode():
            if self.keep_attentions:
                out = self.model.generate(
                    **inputs,
                    **self.adapter._generation_kwargs(),
                    output_attentions=True,
                    return_dict_in_generate=True,
                )
                self._fold_kept(out.attentions[0])
                out = out.sequences
            else:
                out = self.model.generate(**inputs, **self.adapter._generation_kwargs())
        rows = self.chain[:, -1, :].float().cpu()
        self.chain = None
        return rows, self.adapter._decode(out[:, ids.shape[1] :])

    def _fold_kept(self, prefill_attentions: tuple[torch.Tensor, ...]) -> None:
        """HF's `output_attentions=True`: every layer's (B, H, L, L) probabilities of the prefill, all held
        until generation ends; the rollout chain is then folded over the rollout layers."""
        start = time.perf_counter()
        for layer in sorted(self.adapter.rollout_layers):
            self.chain = reference_layer_step(
                prefill_attentions[layer].float(), self.visual_range, self.chain
            )
        self.meter.add_rollout(time.perf_counter() - start)

    def _video_prompt(self, frames: list[np.ndarray], question: str) -> AttentionResult:
        adapter = self.adapter
        size = adapter.video_size(*frames[0].shape[:2])
        clip = [resize_frame(f, size) for f in frames]
        if len(clip) % adapter.temporal_patch_size:
            clip += [clip[-1]] * (adapter.temporal_patch_size - len(clip) % adapter.temporal_patch_size)
        processed = adapter.processor.video_processor(
            videos=[np.stack(clip)], do_resize=False, return_tensors="pt", **adapter._video_processor_kwargs()
        )
        grid = processed["video_grid_thw"].to(adapter.device)
        ids = adapter._prompt_ids(question, "video", int(grid[0].prod()) // adapter.merge_size**2)
        inputs = self._inputs(ids.to(adapter.device), "video", grid)
        inputs["pixel_values_videos"] = processed["pixel_values_videos"].to(adapter.device, self.model.dtype)
        rows, answers = self._generate(inputs)
        shape = (
            int(grid[0, 0]),
            int(grid[0, 1]) // adapter.merge_size,
            int(grid[0, 2]) // adapter.merge_size,
        )
        return _result(rows, ids, adapter.video_token_id, shape, answers, grid)

    def _frame_prompts(self, frames: list[np.ndarray], question: str) -> AttentionResult:
        adapter = self.adapter
        size = adapter.frame_size(*frames[0].shape[:2])
        step = max(1, int(self.config.frame_batch_size))
        rows, answers, grids, ids = [], [], [], None
        for start in range(0, len(frames), step):
            images = [resize_frame(f, size) for f in frames[start : start + step]]
            processed = adapter.processor.image_processor(images=images, do_resize=False, return_tensors="pt")
            grid = processed["image_grid_thw"].to(adapter.device)
            ids = adapter._prompt_ids(question, "image", int(grid[0].prod()) // adapter.merge_size**2)
            batch_ids = ids.expand(len(images), -1).to(adapter.device)
            inputs = self._inputs(batch_ids, "image", grid)
            inputs["pixel_values"] = processed["pixel_values"].to(adapter.device, self.model.dtype)
            batch_rows, batch_answers = self._generate(inputs)
            rows.append(batch_rows)
            answers += batch_answers
            grids.append(grid)
        grid = torch.cat(grids)
        shape = (len(frames), int(grid[0, 1]) // adapter.merge_size, int(grid[0, 2]) // adapter.merge_size)
        return _result(torch.cat(rows), ids, adapter.image_token_id, shape, answers, grid)

    def _inputs(self, ids: torch.Tensor, kind: str, grid: torch.Tensor) -> dict[str, Any]:
        adapter = self.adapter
        token = adapter.video_token_id if kind == "video" else adapter.image_token_id
        inputs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == token).to(torch.int32) * (2 if kind == "video" else 1),
            f"{kind}_grid_thw": grid,
        }
        if kind == "video" and adapter._accepts_seconds:
            seconds = adapter.temporal_patch_size / 2.0  # the processor's default 2 fps (spec §4 Positions)
            inputs["second_per_grid_ts"] = torch.full((ids.shape[0],), seconds, device=adapter.device)
        return inputs


def _result(
    rows: torch.Tensor,
    ids: torch.Tensor,
    token: int,
    shape: tuple[int, int, int],
    answers: list[str],
    grid: Any,
) -> AttentionResult:
    rollout = rows.numpy().astype(np.float32)
    input_ids = ids.expand(rollout.shape[0], -1).cpu().numpy().astype(np.int64)
    mask = input_ids == token
    return AttentionResult(
        rollout=rollout,
        visual_mask=mask,
        attention_map=rollout_to_map(rollout, mask, shape),
        input_ids=input_ids,
        answers=answers,
        grid_thw=grid.cpu().numpy().astype(np.int64),
    )


# ------------------------------------------------------------------------------------------------ one run


def run_pass(
    name: str,
    pipeline: DecafPipeline,
    key_frames: list[np.ndarray],
    all_frames: Any,
    key_indices: list[int],
    prompt: str,
    meter: StageMeter,
    keep_attentions: bool = False,
) -> dict[str, Any]:
    """One DecAF pass, stage by stage; `name` is "reference" or "ours"."""
    adapter, cfg = pipeline.mllm, pipeline.config
    reference = LiteralReference(pipeline, meter, keep_attentions) if name == "reference" else None
    adapter.clear_cache()
    hooks = reference.installed() if reference else timing_our_rollout(meter)
    with hooks:
        with meter.stage("mllm_object"):
            if reference:
                question = prompts.object_class_prompt(prompt, adapter._version("obj"))
                obj_video, obj_frames = reference.prompt_set(key_frames, question)
            else:
                obj_video, obj_frames = adapter.object_class(key_frames, prompt)
            answers = list(obj_video.answers or []) + list(obj_frames.answers or [])
            object_name = adapter.choose_object(prompt, answers)
        with meter.stage("mllm_background"):
            if reference:
                question = prompts.background_prompt(object_name, prompt, adapter._version("bg"))
                bg_video, bg_frames = reference.prompt_set(key_frames, question)
            else:
                bg_video, bg_frames = adapter.background(key_frames, object_name, prompt)
    with meter.stage("fusion"):
        fused = fuse_maps(
            obj_video.attention_map,
            bg_video.attention_map,
            obj_frames.attention_map,
            bg_frames.attention_map,
            cfg,
        ).fused
        points = candidate_points(fused, cfg.point_threshold)
    predictor = pipeline.predictor
    feature_cache = sam2_predictor.FEATURE_CACHE_FRAMES
    if reference:
        sam2_predictor.FEATURE_CACHE_FRAMES = 0  # sam2's own cache: the last encoded frame only
    try:
        with meter.stage("sam2_stage_a"):
            stage_a = (
                run_stage_a(predictor, key_frames, points, cfg.nms_iou_threshold, batch_objects=not reference)
                if any(p is not None for p in points)
                else None
            )
    finally:
        sam2_predictor.FEATURE_CACHE_FRAMES = feature_cache
    with meter.stage("sam2_stage_b"):
        masks = None
        if stage_a is not None:
            tracklets = stage_a.tracklets
            scores = np.asarray([t.score for t in tracklets], np.float32)
            ac = ac_scores(fused, (t.masks() for t in tracklets))
            _, chosen = select_final_prompts(scores, ac, cfg.final_score_threshold)
            frames = [int(key_indices[tracklets[k].frame]) for k in chosen]
            prompt_masks = [tracklets[k].mask(tracklets[k].frame) for k in chosen]
            masks = run_stage_b(predictor, all_frames, frames, prompt_masks).to_array()
    return {
        "answers": answers,
        "object_name": object_name,
        "rollouts": [r.rollout for r in (obj_video, obj_frames, bg_video, bg_frames)],
        "fused": fused,
        "points": [None if p is None else p.points_xy for p in points],
        "num_points": sum(len(p) for p in points if p is not None),
        "masks": masks,
    }


def compare(ref: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    rollout_diff = max(float(np.abs(a - b).max()) for a, b in zip(ref["rollouts"], ours["rollouts"]))
    points_equal = len(ref["points"]) == len(ours["points"]) and all(
        (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
        for a, b in zip(ref["points"], ours["points"])
    )
    masks_equal = (ref["masks"] is None and ours["masks"] is None) or (
        ref["masks"] is not None and ours["masks"] is not None and np.array_equal(ref["masks"], ours["masks"])
    )
    return {
        "max_abs_diff_rollout": rollout_diff,
        "max_abs_diff_fused": float(np.abs(ref["fused"] - ours["fused"]).max()),
        "points_equal": bool(points_equal),
        "masks_equal": bool(masks_equal),
        "answers_equal": ref["answers"] == ours["answers"],
        "object_name_equal": ref["object_name"] == ours["object_name"],
    }


# ------------------------------------------------------------------------------------------------ main


def build_narrow7b(root: Path) -> dict[str, Path]:
    from decaf_backend.sam2.tiny import build_tiny_sam2

    paths = {"mllm": root / "narrow7b" / "qwen2_5_vl", "sam2": root / "narrow7b" / "sam2"}
    marker = root / "narrow7b.BENCH_READY"
    if not marker.is_file():
        build_full_qwen(paths["mllm"], torch.device("cpu"), NARROW7B_TEXT, NARROW7B_VISION)
        build_tiny_sam2(paths["sam2"])
        marker.write_text("ready\n")
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=["tiny", "narrow7b", "full"], default="tiny")
    parser.add_argument("--frames", type=int, default=16, help="video frames; all are key frames up to 64")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--prompt", default="the red ball moving to the right")
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the config's (128)")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument(
        "--only", choices=["both", "ours", "reference"], default="both", help="growth table: one side only"
    )
    parser.add_argument(
        "--attentions",
        choices=["folded", "kept"],
        default="folded",
        help="reference side: fold each rollout layer inside the forward (the reference's custom attention "
        "class), or keep HF's output_attentions of every layer until generation ends (28·B·H·L² fp32)",
    )
    parser.add_argument("--frame-batch", type=int, default=None, help="frame prompts per batch (both sides)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.size == "full" and not torch.cuda.is_available():
        print("--size full needs a CUDA GPU (random Qwen2.5-VL-7B in bf16 and SAM2.1-L)", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if args.size == "full" else "cpu"))
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="decaf-ref-") as tmp:
        work = Path(tmp)
        root = args.models_dir or work / "models"
        paths = build_narrow7b(root) if args.size == "narrow7b" else build_models(args.size, root, device)
        overrides: dict[str, Any] = {"num_key_frames": min(args.frames, 64)}
        if args.max_new_tokens:
            overrides["max_new_tokens"] = args.max_new_tokens
        if args.frame_batch:
            overrides["frame_batch_size"] = args.frame_batch
        config = DecafConfig.from_env(**overrides)
        pipeline = DecafPipeline.from_pretrained(
            mllm=str(paths["mllm"]), sam2=str(paths["sam2"]), device=str(device), config=config
        )
        video = write_video(work / "disc.mp4", disc_frames(args.frames, args.height, args.width), fps=10)
        reader = open_video(video)
        key_indices = key_frame_indices(len(reader), config.num_key_frames)
        key_frames = reader.read_frames(key_indices)
        probe = pipeline.mllm._question_ids(
            pipeline.mllm.encode_video(key_frames), prompts.object_class_prompt(args.prompt, 0)
        )
        pipeline.mllm.clear_cache()
        print(
            f"size={args.size} device={device} dtype={str(pipeline.mllm.model.dtype).removeprefix('torch.')} "
            f"frames={len(reader)} {reader.info.width}x{reader.info.height} key frames={len(key_frames)} "
            f"video prompt L={probe.shape[1]} layers={pipeline.mllm.num_layers} "
            f"rollout layers={len(pipeline.mllm.rollout_layers)} max_new_tokens={config.max_new_tokens}"
        )
        results, meters = {}, {}
        sides = ["reference", "ours"] if args.only == "both" else [args.only]
        for side in sides:
            meters[side] = StageMeter(device)
            results[side] = run_pass(
                side,
                pipeline,
                key_frames,
                reader,
                key_indices,
                args.prompt,
                meters[side],
                keep_attentions=args.attentions == "kept",
            )
            print(f"{side}: {results[side]['num_points']} points, object {results[side]['object_name']!r}")
        reader.close()
    print(f"{'stage':<16}" + "".join(f"{s + ' s':>14}{s + ' cpu s':>14}{s + ' MiB':>14}" for s in sides))
    for stage in STAGES:
        cells = "".join(
            f"{meters[s].seconds[stage]:14.3f}"
            + (f"{'':>14}" if stage == "rollout" else f"{meters[s].cpu_seconds[stage]:14.3f}")
            + (f"{'(in mllm)':>14}" if stage == "rollout" else f"{meters[s].peak[stage] / 2**20:14.1f}")
            for s in sides
        )
        print(f"{stage:<16}{cells}")
    summary: dict[str, Any] = {
        "size": args.size,
        "frames": args.frames,
        "device": str(device),
        "attentions": args.attentions,
        "frame_batch": config.frame_batch_size,
    }
    for s in sides:
        summary[f"{s}_mllm_s"] = meters[s].mllm_seconds
        summary[f"{s}_mllm_cpu_s"] = meters[s].mllm_cpu_seconds
        summary[f"{s}_mllm_peak_mib"] = meters[s].mllm_peak / 2**20
        summary[f"{s}_rollout_s"] = meters[s].seconds["rollout"]
        summary[f"{s}_sam2_s"] = meters[s].sam2_seconds
    if len(sides) == 2:
        ref, ours = meters["reference"], meters["ours"]
        summary.update(
            mllm_time_ratio=ref.mllm_seconds / max(ours.mllm_seconds, 1e-9),
            mllm_cpu_time_ratio=ref.mllm_cpu_seconds / max(ours.mllm_cpu_seconds, 1e-9),
            mllm_peak_mem_ratio=ref.mllm_peak / max(ours.mllm_peak, 1),
            rollout_time_ratio=ref.seconds["rollout"] / max(ours.seconds["rollout"], 1e-9),
            sam2_time_ratio=ref.sam2_seconds / max(ours.sam2_seconds, 1e-9),
            stage_a_time_ratio=ref.seconds["sam2_stage_a"] / max(ours.seconds["sam2_stage_a"], 1e-9),
            **compare(results["reference"], results["ours"]),
        )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
