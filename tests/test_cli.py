"""The main job on the command line, driven as a user would: tiny models, a real encoded video, files out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from decaf_backend.cli import main

from .conftest import encode_video, moving_disc_folder, moving_disc_frames


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_segment_writes_a_mask_per_frame_overlay_and_summary(tiny_models, synthetic_video, tmp_path):
    import av

    out = tmp_path / "out"
    rc = run_cli(
        "segment", synthetic_video, "--prompt", "the red ball rolling to the right", "--out", out,
        "--mllm", tiny_models["qwen2_5_vl"], "--sam2", tiny_models["sam2"], "--quiet",
    )  # fmt: skip
    assert rc == 0
    with av.open(str(synthetic_video)) as container:
        stream = container.streams.video[0]
        num_frames = sum(1 for _ in container.decode(stream))
        width, height = stream.codec_context.width, stream.codec_context.height

    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == num_frames == 21
    for path in masks:
        image = Image.open(path)
        assert image.mode == "P" and image.size == (width, height)
        assert set(np.unique(np.asarray(image))) <= {0, 1}

    summary = json.loads((out / "summary.json").read_text())
    assert summary["prompt"] == "the red ball rolling to the right"
    assert summary["object_name"]
    assert summary["random_weights"] is True
    assert summary["video"] == {
        "path": str(synthetic_video), "num_frames": num_frames, "fps": pytest.approx(10.0),
        "width": width, "height": height,
    }  # fmt: skip
    assert summary["key_frame_indices"] == np.linspace(0, num_frames - 1, 16).astype(int).tolist()
    assert {"video", "mllm_object", "mllm_background", "fusion", "sam2"} <= set(summary["timings_s"])
    assert summary["points"], "the fused map always has a maximum of 1, so at least one point exists"
    for p in summary["points"]:
        assert p["frame"] in summary["key_frame_indices"]
        assert 0 <= p["x"] <= width and 0 <= p["y"] <= height
    assert len(summary["mask_area_per_frame"]) == num_frames
    confidence = summary["confidence_per_frame"]  # from the tiny SAM2's own signals in stage B
    assert len(confidence) == num_frames and all(0.0 <= c <= 1.0 for c in confidence)
    areas = [int((np.asarray(Image.open(p)) > 0).sum()) for p in masks]
    assert areas == summary["mask_area_per_frame"]
    overlay = Path(summary["overlay"])
    assert overlay.is_file() and overlay.stat().st_size > 0
    with av.open(str(overlay)) as container:
        assert sum(1 for _ in container.decode(video=0)) == num_frames


def test_segment_on_a_frame_folder_with_qwen2_vl(tiny_models, tmp_path):
    folder = moving_disc_folder(tmp_path / "frames", 5, 70, 90)
    out = tmp_path / "out"
    rc = run_cli(
        "segment", folder, "--prompt", "which object moves?", "--out", out, "--overlay", "gif",
        "--mllm", tiny_models["qwen2_vl"], "--sam2", tiny_models["sam2"], "--quiet",
    )  # fmt: skip
    assert rc == 0
    assert len(list((out / "masks").glob("*.png"))) == 5
    assert Image.open(out / "masks" / "00000.png").size == (90, 70)
    assert (out / "overlay.gif").is_file()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "not found"),
        ("garbage", "cannot be read"),
        ("empty_file", "empty (0 bytes)"),
        ("one_frame", "at least 2 frames"),
    ],
)
def test_bad_videos_give_a_clear_error(case, expected, tiny_models, tmp_path, capsys):
    path = tmp_path / "video.mp4"
    if case == "garbage":
        path.write_bytes(b"this is not a video" * 100)
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "one_frame":
        encode_video(path, moving_disc_frames(1, 64, 64))
    rc = run_cli(
        "segment", path, "--prompt", "the ball", "--out", tmp_path / "out",
        "--mllm", tiny_models["qwen2_5_vl"], "--sam2", tiny_models["sam2"], "--quiet",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and expected in err.lower()
    assert "Traceback" not in err


def test_empty_prompt_is_refused_before_loading_models(synthetic_video, tmp_path, capsys):
    rc = run_cli(
        "segment", synthetic_video, "--prompt", "   ", "--out", tmp_path / "o", "--mllm", tmp_path / "nowhere"
    )
    assert rc == 2
    assert "prompt is empty" in capsys.readouterr().err


def test_missing_model_path_names_the_problem(synthetic_video, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no_such_model"
    rc = run_cli(
        "segment", synthetic_video, "--prompt", "the ball", "--out", tmp_path / "o", "--mllm", missing
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert str(missing) in err and "DECAF_MLLM" in err
