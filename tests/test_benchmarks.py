"""Smoke runs of the benchmark scripts as subprocesses: every line they promise is printed, and our rollout
matches the reference's literal one on the same Q/K."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
ROLLOUT_TOLERANCE = 1e-5
NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)"


def run_script(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCHMARKS.parent,
    )


def run_ok(name: str, options: str) -> str:
    """Run a script with the space-separated `options`; it must succeed. Its standard output."""
    proc = run_script(name, *options.split())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def find(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match is not None, f"no line matching {pattern!r} in:\n{text}"
    return match


def check_rollout_lines(out: str) -> None:
    ref_s = float(find(rf"^reference\s+{NUMBER} s$", out).group(1))
    our_s = float(find(rf"^decaf_backend\s+{NUMBER} s$", out).group(1))
    ratio = float(find(rf"^speed ratio \(reference / ours\): {NUMBER}x$", out).group(1))
    assert ref_s > 0 and our_s > 0 and ratio > 0
    diff = float(find(rf"^max abs difference of the rollout rows: {NUMBER}$", out).group(1))
    assert diff < ROLLOUT_TOLERANCE


def test_bench_rollout_small() -> None:
    out = run_ok("bench_rollout.py", "--length 96 --heads 4 --kv-heads 2 --layers 3 --repeats 1")
    find(r"^shape B=1 H=4/2 L=96 d=64 layers=3 bf16 on cpu$", out)
    find(r"^largest working set: reference .* MiB, ours .* MiB \(ratio .*x\)$", out)
    check_rollout_lines(out)


@pytest.mark.slow  # 17-35 s on a shared 2-core CPU: tiny models are built, answers run to 128 tokens
def test_bench_pipeline_tiny() -> None:
    out = run_ok("bench_pipeline.py", "--size tiny --frames 6 --height 64 --width 96")
    find(r"^models: size=tiny mllm=.*qwen2_5_vl sam2=.*sam2 \(random weights\)$", out)
    find(r"^device: cpu mllm dtype: float32 max new tokens: \d+$", out)
    find(rf"^build models\s+{NUMBER} s\s+load models\s+{NUMBER} s$", out)
    # the encoded video comes back with the asked-for size and length (16 key frames > 6 frames: all are key)
    find(r"^video: 6 frames 96x64, 6 key frames$", out)
    for stage in ("video", "mllm_object", "mllm_background", "fusion", "sam2"):
        find(rf"^stage {stage}\s+{NUMBER} s$", out)
    find(rf"^segment total\s+{NUMBER} s \({NUMBER} ms/frame\)$", out)
    find(r"^result: object '.*', \d+ points, prompt frames \[.*\], masked frames \d+/6$", out)
    rss = float(find(rf"^peak RSS: {NUMBER} MiB", out).group(1))
    assert rss > 0
    find(rf"^refine \(1 click, whole video\)\s+{NUMBER} s$", out)
    shape = find(
        r"^rollout baseline on the video-level object prompt: layers (\d+)\.\.(\d+) \((\d+)\), ", out
    )
    first, last, count = (int(g) for g in shape.groups())
    assert count == last - first + 1 > 0
    check_rollout_lines(out)


def test_bench_pipeline_full_needs_cuda() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency
        pytest.skip("torch is not installed")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --size full would build a 7B model")
    proc = run_script("bench_pipeline.py", "--size", "full", timeout=120)
    assert proc.returncode == 2
    assert "--size full needs a CUDA GPU" in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow  # builds the tiny models and runs every prompt twice (reference and ours)
@pytest.mark.parametrize("attentions", ["folded", "kept"])
def test_bench_reference_tiny(attentions: str) -> None:
    """Reference computation (rollout folded per layer, or HF's output_attentions kept for every layer)
    and ours on the tiny models: same rollouts, fused map, points and masks."""
    out = run_ok(
        "bench_reference.py",
        f"--size tiny --frames 4 --height 56 --width 84 --max-new-tokens 2 --attentions {attentions}",
    )
    find(r"^size=tiny device=cpu dtype=float32 frames=4 84x56 key frames=4 video prompt L=\d+ ", out)
    for stage in ("mllm_object", "mllm_background", "rollout", "fusion", "sam2_stage_a", "sam2_stage_b"):
        find(rf"^{stage}\s+{NUMBER}\s+", out)
    summary = json.loads(out.strip().splitlines()[-1])
    for key in ("mllm_time_ratio", "mllm_peak_mem_ratio", "sam2_time_ratio"):
        assert summary[key] > 0
    assert summary["max_abs_diff_rollout"] < ROLLOUT_TOLERANCE
    assert summary["max_abs_diff_fused"] < 1e-5
    assert summary["points_equal"] and summary["masks_equal"] and summary["answers_equal"]
    assert summary["attentions"] == attentions


def test_bench_reference_full_needs_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: --size full would build a 7B model")
    proc = run_script("bench_reference.py", "--size", "full", timeout=120)
    assert proc.returncode == 2 and "--size full needs a CUDA GPU" in proc.stderr
