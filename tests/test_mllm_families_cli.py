"""`segment`, `evaluate` and `serve` with the LLaVA-OneVision, InternVL3 and Qwen3-VL tiny checkpoints.

The whole pipeline runs to masks on a synthetic clip per family (segment); evaluate and serve are smoke
tests at the command line (one expression; the server loads the family and reports the model loaded).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from decaf_backend.cli import main

from .conftest import moving_disc_folder
from .ls_server import free_port
from .synthetic_rvos import build_davis

FAMILIES = ("internvl3", "llava_onevision", "qwen3_vl")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_segment_a_clip_to_masks(tiny_models, tmp_path, family) -> None:
    folder = moving_disc_folder(tmp_path / "frames", 5, 70, 90)
    out = tmp_path / "out"
    rc = main([
        "segment", str(folder), "--prompt", "the red ball rolling to the right", "--out", str(out),
        "--mllm", str(tiny_models[family]), "--sam2", str(tiny_models["sam2"]), "--quiet",
    ])  # fmt: skip
    assert rc == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 5 and Image.open(masks[0]).size == (90, 70)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["random_weights"] is True and summary["object_name"]
    # the default seeds were picked so that the random attention leaves points on this clip: SAM2 runs
    assert summary["points"] and summary["prompt_frames"]
    areas = [int((np.asarray(Image.open(p)) > 0).sum()) for p in masks]
    assert areas == summary["mask_area_per_frame"] and sum(areas) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_runs_with_the_family(tiny_models, tmp_path, family) -> None:
    build_davis(tmp_path / "data", n=4)
    out = tmp_path / "out"
    rc = main([
        "evaluate", "--dataset", "davis17", "--root", str(tmp_path / "data"), "--out", str(out), "--limit", "1",
        "--mllm", str(tiny_models[family]), "--sam2", str(tiny_models["sam2"]), "--device", "cpu",
        "--dtype", "fp32", "--quiet",
    ])  # fmt: skip
    assert rc == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["JF"]) <= 100.0


@pytest.mark.parametrize("family", FAMILIES)
def test_serve_loads_the_family(tiny_models, tmp_path, family) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MODEL_DIR": str(tmp_path),
        "DECAF_MLLM": str(tiny_models[family]),
        "DECAF_SAM2": str(tiny_models["sam2"]),
        "DECAF_DEVICE": "cpu",
    }
    proc = subprocess.Popen([sys.executable, "-m", "decaf_backend", "serve"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline, health = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
            except requests.RequestException:
                health = None
            if health and health.get("model_loaded"):
                break
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            time.sleep(0.5)
        assert health is not None and health["status"] == "UP" and health["model_loaded"] is True, health
    finally:
        proc.terminate()
        proc.wait(timeout=30)
