"""mllm/: prompts, sizes, loading errors, device/dtype choice, tiny checkpoints and the Qwen adapters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from decaf_backend.config import DecafConfig
from decaf_backend.errors import DecafError, ModelNotFoundError, PromptError
from decaf_backend.mllm import load_mllm, prompts, resolve_device, resolve_dtype
from decaf_backend.mllm.base import MLLMAdapter
from decaf_backend.mllm.loading import RANDOM_WEIGHTS_MARKER
from decaf_backend.mllm.qwen import QwenVLAdapter, smart_resize, video_frame_size
from decaf_backend.mllm.tiny import build_tiny_qwen

KINDS = ("qwen2_5_vl", "qwen2_vl")


def _frames(n: int, height: int = 96, width: int = 160, seed: int = 0) -> list[np.ndarray]:
    """A red disc moving right on a noisy gradient (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        frame = (np.linspace(30, 160, width)[None, :, None] + rng.integers(0, 40, (height, width, 3))).astype(
            np.uint8
        )
        disc = (xx - (20 + i * (width - 40) / max(1, n - 1))) ** 2 + (yy - height / 2) ** 2 <= 15**2
        frame[disc] = (220, 30, 30)
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_mllm")
    return {kind: build_tiny_qwen(kind, root / kind, seed=0) for kind in KINDS}


@pytest.fixture(scope="module")
def adapters(tiny_dirs: dict[str, Path]) -> dict[str, QwenVLAdapter]:
    config = DecafConfig(max_new_tokens=4, frame_batch_size=8)
    return {kind: load_mllm(path, device="cpu", config=config) for kind, path in tiny_dirs.items()}


# ----- prompts -----


def test_expression_normalisation() -> None:
    assert prompts.normalize_expression("  the dog jumping ") == "the dog jumping."
    assert prompts.normalize_expression("Which cat is black?") == "Which cat is black?"
    assert prompts.normalize_expression("A Car.") == "A Car."
    with pytest.raises(PromptError):
        prompts.normalize_expression("   ")


def test_prompt_lower_casing_and_placeholders() -> None:
    obj = prompts.object_class_prompt(" The Big DOG ")
    assert obj.startswith("the big dog. \n") and "DOG" not in obj
    # the chosen class goes in as given; the object choice lower-cases the candidates, keeps duplicates
    assert "excluding any Dog." in prompts.background_prompt("Dog")
    choice = prompts.object_choice_prompt("The Dog", ["Dog", "person", "dog"])
    assert (
        "- Expression: 'the dog.'\n" in choice and "- Candidate object class list: dog,person,dog\n" in choice
    )
    assert "the dog" in prompts.background_prompt("x", "The Dog", version=3)
    for version in (1, 2, 3):
        assert prompts.object_class_prompt("a", version) != prompts.object_class_prompt("a", 0)
    with pytest.raises(PromptError):
        prompts.background_prompt("dog", version=3)  # needs the expression
    with pytest.raises(PromptError):
        prompts.object_class_prompt("a", version=9)


# ----- sizes and maps -----


def test_smart_resize_spec_examples() -> None:
    # spec §3: 854x480 frames -> 728x392 for 400 tokens, merged grid 14x26; frames ×2
    assert video_frame_size(480, 854, 400) == (392, 728)
    assert video_frame_size(168, 224, 400) == (168, 224)  # golden e2e: (4, 12, 16) patch grid
    assert smart_resize(784, 1456) == (784, 1456)
    assert smart_resize(10, 10) == (56, 56)  # at least 4 tokens
    with pytest.raises(DecafError):
        smart_resize(1, 500)


def test_missing_model_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelNotFoundError, match="set DECAF_MLLM to a local folder"):
        load_mllm(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_mllm(tmp_path)  # an existing folder that is not a checkpoint
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(DecafError, match="model_type 'bert'"):
        load_mllm(tmp_path)
    # a hub id that is not cached, with the hub switched off
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(ModelNotFoundError, match="not found locally and the hub is unreachable"):
        load_mllm("nobody-here/no-such-model-xyz")


def test_device_and_dtype_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(DecafError):
        resolve_device("toaster")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None).type == "cuda"
    assert resolve_device("cuda:0").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DecafError, match="not available"):
        resolve_device("cuda")
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device(None).type == "cpu"
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("fp16", "cpu") == torch.float16
    assert resolve_dtype("torch.bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float32, "cuda") == torch.float32
    with pytest.raises(DecafError):
        resolve_dtype("int3", "cpu")


def test_tiny_checkpoints_round_trip_offline(
    tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    for kind, path in tiny_dirs.items():
        names = {p.name for p in path.iterdir()}
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
        assert RANDOM_WEIGHTS_MARKER in names
        config = json.loads((path / "config.json").read_text())
        assert config["model_type"] == kind and config["decaf_random_weights"] is True
        adapter = load_mllm(path, device="cpu", config=DecafConfig(max_new_tokens=2))
        assert isinstance(adapter, MLLMAdapter) and adapter.random_weights
        assert adapter.model_type == kind and adapter.rollout_start_layer == adapter.num_layers // 2
        # byte-level tokenizer: one token per byte, decodes back exactly
        tokenizer = adapter.processor.tokenizer
        text = "a red ball, rolling → right"
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text.encode()) and tokenizer.decode(ids) == text
    # the same seed rebuilds the same weights
    again = build_tiny_qwen("qwen2_vl", tiny_dirs["qwen2_vl"].parent / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (
        tiny_dirs["qwen2_vl"] / "model.safetensors"
    ).read_bytes()
    with pytest.raises(DecafError):
        build_tiny_qwen("llava", tiny_dirs["qwen2_vl"].parent / "x")


def test_rollout_start_layer_override(tiny_dirs: dict[str, Path]) -> None:
    adapter = load_mllm(tiny_dirs["qwen2_vl"], device="cpu", config=DecafConfig(rollout_start_layer=1))
    assert list(adapter.rollout_layers) == list(range(1, adapter.num_layers))
    with pytest.raises(DecafError):
        QwenVLAdapter(adapter.model, adapter.processor, DecafConfig(rollout_start_layer=adapter.num_layers))


# ----- the adapters on tiny models -----


@pytest.mark.parametrize("kind", KINDS)
def test_all_prompt_kinds_run_with_odd_frame_count(adapters: dict[str, QwenVLAdapter], kind: str) -> None:
    adapter = adapters[kind]
    frames = _frames(5)
    obj_video, obj_frames = adapter.object_class(frames, "the red disc")
    h_v, w_v = (s // 28 for s in adapter.video_size(96, 160))
    assert obj_video.attention_map.shape == (3, h_v, w_v)  # 5 frames -> last repeated -> 3 frame pairs
    assert obj_frames.attention_map.shape == (5, 2 * h_v, 2 * w_v)
    assert obj_video.rollout.shape[0] == 1 and obj_frames.rollout.shape[0] == 5
    assert len(obj_video.answers) == 1 and len(obj_frames.answers) == 5
    assert all(isinstance(a, str) and a == a.strip() for a in obj_video.answers + obj_frames.answers)
    for res in (obj_video, obj_frames):
        assert res.rollout.dtype == np.float32 and np.isfinite(res.rollout).all()
        assert (res.rollout >= 0).all() and (res.rollout <= 1 + 1e-6).all()
        assert res.attention_map.min() >= 0 and res.attention_map.max() > 0
    name = adapter.choose_object("the red disc", obj_video.answers + obj_frames.answers)
    assert isinstance(name, str) and name == name.lower()
    bg_video, bg_frames = adapter.background(frames, name or "disc")
    assert bg_video.answers is None and bg_frames.answers is None
    assert bg_video.attention_map.shape == obj_video.attention_map.shape
    assert bg_frames.attention_map.shape == obj_frames.attention_map.shape
    # background prompts differ from object prompts, so their rollouts do too
    assert not np.allclose(bg_video.attention_map, obj_video.attention_map)


def test_odd_frame_count_equals_repeating_the_last_frame(adapters: dict[str, QwenVLAdapter]) -> None:
    adapter = adapters["qwen2_5_vl"]
    frames = _frames(5, seed=3)
    question = prompts.background_prompt("disc")
    odd = adapter.video_level(frames, question, generate=False)
    even = adapter.video_level(frames + [frames[-1]], question, generate=False)
    np.testing.assert_array_equal(odd.input_ids, even.input_ids)
    np.testing.assert_allclose(odd.rollout, even.rollout, atol=1e-7)


def test_frame_batching_does_not_change_results(tiny_dirs: dict[str, Path]) -> None:
    frames = _frames(5, seed=1)
    results = {}
    for batch in (1, 2, 8):
        adapter = load_mllm(
            tiny_dirs["qwen2_vl"], device="cpu", config=DecafConfig(max_new_tokens=4, frame_batch_size=batch)
        )
        results[batch] = adapter.frame_level(
            frames, prompts.object_class_prompt("the red disc"), generate=True
        )
    for batch in (2, 8):
        np.testing.assert_allclose(results[batch].rollout, results[1].rollout, atol=1e-6, rtol=1e-5)
        assert results[batch].answers == results[1].answers
        np.testing.assert_array_equal(results[batch].grid_thw, results[1].grid_thw)


def test_vision_encoder_runs_once_for_object_and_background(
    adapters: dict[str, QwenVLAdapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = adapters["qwen2_5_vl"]
    adapter.clear_cache()
    calls = {"video": 0, "image": 0}
    inner = adapter.model.model
    for kind in calls:
        original = getattr(inner, f"get_{kind}_features")

        def counted(*args, _kind=kind, _original=original, **kwargs):
            calls[_kind] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(inner, f"get_{kind}_features", counted)
    frames = _frames(4, seed=2)
    adapter.object_class(frames, "the red disc")
    first = dict(calls)
    bg_video, _ = adapter.background(frames, "disc")
    assert calls == first and first["video"] == 1 and first["image"] >= 1
    # the cached features give the same result as a fresh encoding
    adapter.clear_cache()
    fresh_video, _ = adapter.background(frames, "disc")
    np.testing.assert_array_equal(fresh_video.rollout, bg_video.rollout)


def test_bf16_model_on_cpu(tiny_dirs: dict[str, Path]) -> None:
    adapter = load_mllm(
        tiny_dirs["qwen2_5_vl"], device="cpu", dtype="bf16", config=DecafConfig(max_new_tokens=2)
    )
    assert adapter.model.dtype == torch.bfloat16
    video = adapter.video_level(_frames(2), prompts.background_prompt("disc"), generate=False)
    assert video.rollout.dtype == np.float32 and np.isfinite(video.rollout).all()


def test_rejects_frames_of_different_sizes(adapters: dict[str, QwenVLAdapter]) -> None:
    frames = _frames(2) + _frames(1, height=64)
    with pytest.raises(DecafError):
        adapters["qwen2_vl"].object_class(frames, "the red disc")
