"""decaf_backend.sam2 on a tiny random-weight SAM2: loading, lazy frames, prompts, propagation, corrections.

The tiny model's masks mean nothing; these tests check the plumbing (what SAM2 is given and what comes back).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from decaf_backend.devices import pick_device
from decaf_backend.errors import (
    DecafError,
    ModelNotFoundError,
    PromptError,
    PromptOutOfRangeError,
    VideoError,
)
from decaf_backend.sam2.frames import Sam2Frames
from decaf_backend.sam2.loading import HUB_MODELS, autocast_dtype, load_sam2_predictor
from decaf_backend.sam2.predictor import Sam2VideoPredictor, propagate_all
from decaf_backend.sam2.tiny import TINY_CHECKPOINT, build_tiny_sam2
from decaf_backend.video import open_video

NUM_FRAMES, HEIGHT, WIDTH = 6, 60, 84


def moving_square(n: int, height: int, width: int) -> np.ndarray:
    frames = np.full((n, height, width, 3), 40, dtype=np.uint8)
    for i in range(n):
        x = 6 + 8 * i
        frames[i, 20:40, x : x + 20] = (230, 200, 30)
    return frames


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_sam2(tmp_path_factory.mktemp("sam2") / "sam2", seed=0)


@pytest.fixture(scope="module")
def predictor(tiny_dir) -> Sam2VideoPredictor:
    return load_sam2_predictor(tiny_dir, device="cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "square.mp4"
    frames = moving_square(NUM_FRAMES, HEIGHT, WIDTH)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return open_video(path)


class CountingFrames:
    """A frame sequence that records which frames were read."""

    def __init__(self, frames) -> None:
        self.frames, self.reads = frames, []

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> np.ndarray:
        self.reads.append(int(index))
        return self.frames[index]


def binary(logits: torch.Tensor) -> np.ndarray:
    return (logits > 0).numpy()


# ------------------------------------------------------------------------------------------------ loading


def test_tiny_model_files_and_checkpoint_round_trip(tiny_dir, predictor):
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(["config.yaml", TINY_CHECKPOINT])
    saved = torch.load(tiny_dir / TINY_CHECKPOINT, map_location="cpu", weights_only=True)
    assert list(saved) == ["model"]
    loaded = predictor.model.state_dict()
    assert saved["model"].keys() == loaded.keys()
    assert all(torch.equal(saved["model"][k], loaded[k]) for k in loaded)
    assert predictor.random_weights and predictor.image_size == 256 and predictor.dtype is None
    assert type(predictor.model).__name__ == "SAM2VideoPredictor"
    # the postprocessing of sam2's video builder, and corrections that stay conditioning frames
    assert predictor.model.fill_hole_area == 8 and predictor.model.add_all_frames_to_correct_as_cond
    assert predictor.model.sam_mask_decoder.dynamic_multimask_via_stability
    # the checkpoint file itself (config found next to it) and an explicit config give the same weights
    by_file = load_sam2_predictor(tiny_dir / TINY_CHECKPOINT, device="cpu")
    by_config = load_sam2_predictor(tiny_dir / TINY_CHECKPOINT, config=tiny_dir / "config.yaml", dtype="fp32")
    for other in (by_file, by_config):
        assert all(torch.equal(v, other.model.state_dict()[k]) for k, v in loaded.items())


def test_folder_with_a_json_config(tmp_path, tiny_dir, predictor):
    import yaml

    folder = tmp_path / "json_model"
    folder.mkdir()
    shutil.copy(tiny_dir / TINY_CHECKPOINT, folder / "weights.pt")
    config = yaml.safe_load((tiny_dir / "config.yaml").read_text())
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_sam2_predictor(folder, device="cpu")
    assert loaded.random_weights and loaded.image_size == predictor.image_size
    reference = predictor.model.state_dict()
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in reference.items())


def test_config_inferred_from_a_known_checkpoint_name(tmp_path, tiny_dir):
    """A bare sam2.1_hiera_tiny.pt takes the package's tiny config, which our 256-px weights do not fit."""
    folder = tmp_path / "named"
    folder.mkdir()
    shutil.copy(tiny_dir / TINY_CHECKPOINT, folder / "sam2.1_hiera_tiny.pt")
    with pytest.raises(ModelNotFoundError, match="does not fit its config"):
        load_sam2_predictor(folder / "sam2.1_hiera_tiny.pt", device="cpu")


def test_same_seed_same_weights(tmp_path, predictor):
    def weights(seed: int, name: str) -> dict:
        path = build_tiny_sam2(tmp_path / name, seed=seed) / TINY_CHECKPOINT
        return torch.load(path, map_location="cpu", weights_only=True)["model"]

    again, other = weights(0, "again"), weights(1, "other")
    reference = predictor.model.state_dict()
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    assert not all(torch.equal(reference[k], other[k]) for k in reference)


def test_hub_ids_match_the_sam2_package():
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    assert HUB_MODELS == HF_MODEL_ID_TO_FILENAMES
    assert "facebook/sam2.1-hiera-large" in HUB_MODELS and "facebook/sam2-hiera-tiny" in HUB_MODELS


def test_missing_models_raise_model_not_found(tmp_path, tiny_dir, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_sam2_predictor(tmp_path / "nothing" / "sam2.1_hiera_large.pt")
    with pytest.raises(ModelNotFoundError, match="unknown SAM2 model"):
        load_sam2_predictor("facebook/sam2.1-hiera-huge")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="transformers-format"):
        load_sam2_predictor(empty)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(tiny_dir / TINY_CHECKPOINT, lonely / "weights.pt")
    with pytest.raises(ModelNotFoundError, match="no SAM2 config"):
        load_sam2_predictor(lonely)
    # a hub id that is not cached, with downloads forbidden
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_sam2_predictor("facebook/sam2.1-hiera-tiny")


def test_checkpoint_that_does_not_fit_its_config(tmp_path, tiny_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_dir / "config.yaml", broken / "config.yaml")
    weights = torch.load(tiny_dir / TINY_CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    weights.pop(next(iter(weights)))
    torch.save({"model": weights}, broken / "model.pt")
    with pytest.raises(ModelNotFoundError, match="1 missing"):
        load_sam2_predictor(broken)
    torch.save(weights, broken / "model.pt")  # a bare state dict, not sam2's {"model": ...}
    with pytest.raises(ModelNotFoundError, match="not a sam2 checkpoint"):
        load_sam2_predictor(broken)


def test_device_and_dtype_choice():
    cpu = torch.device("cpu")
    assert pick_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert pick_device() in (cpu, torch.device("mps"))
        with pytest.raises(DecafError, match="CUDA"):
            pick_device("cuda")
    assert autocast_dtype(None, cpu) is None and autocast_dtype("fp32", cpu) is None
    assert (
        autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype(torch.float16, cpu) == torch.float16
    )
    with pytest.raises(DecafError, match="unknown dtype"):
        autocast_dtype("int8", cpu)


# ------------------------------------------------------------------------------------------------ frames


def test_init_state_reads_frames_lazily(predictor, video):
    frames = CountingFrames(video)
    state = predictor.init_state(frames)
    assert isinstance(state["images"], Sam2Frames) and state["num_frames"] == NUM_FRAMES
    assert (state["video_height"], state["video_width"]) == (HEIGHT, WIDTH)
    assert set(frames.reads) == {0}  # only frame 0, which SAM2 encodes to warm up
    predictor.add_new_points_or_box(state, 4, 1, points=[[0.5, 0.5]])
    assert set(frames.reads) == {0, 4}


def test_lazy_frames_match_sam2_jpeg_loader(tmp_path, video):
    """Our in-memory preprocessing equals what sam2 does with a frame file (lossless PNG here)."""
    from sam2.utils.misc import _load_img_as_tensor

    lazy = Sam2Frames(video, 256)
    path = tmp_path / "00003.png"
    Image.fromarray(video[3]).save(path)
    expected, height, width = _load_img_as_tensor(str(path), 256)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    expected = (expected.float() - mean) / std
    assert (height, width) == (HEIGHT, WIDTH)
    assert lazy[3].dtype == torch.float32 and lazy[3].shape == (3, 256, 256)
    assert torch.allclose(lazy[3], expected, atol=1e-6)


def test_frames_of_mixed_sizes_are_refused(predictor):
    frames = [np.zeros((40, 50, 3), np.uint8), np.zeros((41, 50, 3), np.uint8)]
    state = predictor.init_state(frames)
    with pytest.raises(VideoError, match="one size"):
        predictor.add_new_points_or_box(state, 1, 1, points=[[0.5, 0.5]])
    with pytest.raises(VideoError):
        predictor.init_state([])


# ------------------------------------------------------------------------------------------------ prompts


def test_click_returns_video_size_logits_and_the_kept_masks_iou(predictor, video, monkeypatch):
    decoder = predictor.model.sam_mask_decoder
    seen = []
    original = decoder.forward

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append((kwargs.get("multimask_output"), out[1].detach().clone()))
        return out

    monkeypatch.setattr(decoder, "forward", spy)
    state = predictor.init_state(video)
    frame, obj_ids, logits, iou = predictor.add_new_points_or_box(
        state, 4, 100, points=np.array([[0.4, 0.5]], np.float32), labels=np.array([1], np.int32)
    )
    assert frame == 4 and obj_ids == [100]
    assert (
        logits.shape == (1, 1, HEIGHT, WIDTH)
        and logits.dtype == torch.float32
        and logits.device.type == "cpu"
    )
    assert iou.shape == (1,) and iou.dtype == torch.float32
    multimask, decoder_ious = seen[-1]
    assert multimask and decoder_ious.shape == (1, 3)  # one click: three candidates, SAM2 keeps the best
    assert iou.item() == pytest.approx(decoder_ious.max().item(), abs=1e-6)

    # pixel coordinates (normalize_coords=True) give the same prompt as normalised ones
    state2 = predictor.init_state(video)
    _, _, pixel_logits, _ = predictor.add_new_points_or_box(
        state2, 4, 100, points=[[0.4 * WIDTH, 0.5 * HEIGHT]], labels=[1], normalize_coords=True
    )
    assert torch.allclose(pixel_logits, logits, atol=1e-5)


def test_several_objects_box_and_mask(predictor, video):
    state = predictor.init_state(video)
    predictor.add_new_points_or_box(state, 2, 100, points=[[0.3, 0.5], [0.9, 0.1]], labels=[1, 0])
    _, obj_ids, logits, iou = predictor.add_new_points_or_box(
        state, 2, 101, box=[10, 15, 50, 45], normalize_coords=True
    )
    assert obj_ids == [100, 101] and logits.shape == (2, 1, HEIGHT, WIDTH) and np.isfinite(iou.item())
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:40, 16:36] = 255
    _, obj_ids, logits = predictor.add_new_mask(state, 2, 102, mask)
    assert obj_ids == [100, 101, 102] and logits.shape == (3, 1, HEIGHT, WIDTH)
    got = binary(logits[2, 0])
    overlap = (got & (mask > 0)).sum() / (got | (mask > 0)).sum()
    assert overlap > 0.95  # a mask prompt is kept as the frame's output (use_mask_input_as_output)
    with pytest.raises(PromptOutOfRangeError):
        predictor.add_new_points_or_box(state, NUM_FRAMES, 100, points=[[0.5, 0.5]])
    with pytest.raises(PromptError):
        predictor.add_new_points_or_box(state, 1, 100)
    with pytest.raises(PromptError):
        predictor.add_new_mask(state, 1, 100, np.zeros((2, 3, 4)))


def test_clicks_accumulate_on_a_frame(predictor, video):
    state = predictor.init_state(video)
    predictor.add_new_points_or_box(state, 3, 1, points=[[0.3, 0.5]])
    predictor.add_new_points_or_box(state, 3, 1, points=[[0.1, 0.1]], labels=[0])
    assert state["point_inputs_per_obj"][0][3]["point_labels"].tolist() == [[1, 0]]
    predictor.add_new_points_or_box(state, 3, 1, box=[0.1, 0.2, 0.5, 0.8])  # a box restarts the frame
    assert state["point_inputs_per_obj"][0][3]["point_labels"].tolist() == [[2, 3]]


# ------------------------------------------------------------------------------------------------ propagation


def test_propagation_covers_every_frame_once(predictor, video):
    state = predictor.init_state(video)
    predictor.add_new_points_or_box(state, 3, 7, points=[[0.3, 0.5]])
    order = [f for f, obj_ids, logits in propagate_all(predictor, state)]
    assert order == [3, 4, 5, 2, 1, 0]
    seen = {}
    for f, obj_ids, logits in predictor.propagate_in_video(state, 1, 2, False):
        seen[f] = logits
        assert obj_ids == [7] and logits.shape == (1, 1, HEIGHT, WIDTH)
    assert sorted(seen) == [1, 2, 3]  # Meta's semantics: the start plus max_frame_num_to_track frames


def test_propagation_from_frame_zero_and_reset(predictor, video):
    state = predictor.init_state(video)
    predictor.add_new_points_or_box(state, 0, 1, points=[[0.3, 0.5]])
    assert [f for f, _, _ in propagate_all(predictor, state)] == list(range(NUM_FRAMES))
    predictor.reset_state(state)
    assert state["obj_ids"] == [] and predictor.conditioning_frames(state) == []
    with pytest.raises(PromptError, match="nothing to propagate"):
        list(propagate_all(predictor, state))
    with pytest.raises(PromptError, match="nothing to propagate"):
        list(predictor.propagate_in_video(state, 0, NUM_FRAMES, False))
    predictor.add_new_mask(state, NUM_FRAMES - 1, 5, np.ones((HEIGHT, WIDTH), bool))
    assert [f for f, _, _ in propagate_all(predictor, state)] == list(range(NUM_FRAMES - 1, -1, -1))


def test_a_video_first_prompted_on_frame_one_gets_a_mask_on_frame_zero(predictor, video):
    """sam2 skips a backward pass that starts at frame 0: prompted on frame 1, frame 0 must still come back."""
    state = predictor.init_state(video)
    predictor.add_new_points_or_box(state, 1, 4, points=[[0.3, 0.5]])
    order = [f for f, _, _ in propagate_all(predictor, state)]
    assert order == [*range(1, NUM_FRAMES), 0]
    seen = [f for f, _, _ in predictor.propagate_together(state, 0, 1, True)]
    assert seen == [0]


def test_click_after_propagation_refines_and_survives_repropagation(predictor, video):
    state = predictor.init_state(video)
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[20:40, 16:36] = True
    predictor.add_new_mask(state, 2, 100, mask)
    tracked = {f: logits for f, _, logits in propagate_all(predictor, state)}
    assert sorted(tracked) == list(range(NUM_FRAMES))

    # a negative click on a tracked frame refines that frame's mask (SAM2 feeds it the tracked logits)
    _, _, refined, _ = predictor.add_new_points_or_box(state, 4, 100, points=[[0.5, 0.5]], labels=[0])
    assert not torch.equal(refined, tracked[4])
    assert predictor.conditioning_frames(state) == [2, 4]

    again = {f: logits for f, _, logits in propagate_all(predictor, state)}
    assert sorted(again) == list(range(NUM_FRAMES))
    assert torch.equal(again[4], refined)  # the correction is kept, not re-tracked away
    assert torch.equal(again[2], tracked[2])  # the original prompt frame is unchanged
    assert not torch.equal(again[5], tracked[5])  # frames after the correction see it in memory

    # a box on an earlier frame: the next re-propagation starts there
    predictor.add_new_points_or_box(state, 0, 100, box=[5, 10, 40, 50], normalize_coords=True)
    assert predictor.conditioning_frames(state) == [0, 2, 4]


def test_fill_holes_without_the_cuda_extension(predictor):
    """sam2's hole filling (spec §9: holes up to 8 px) runs on the CPU when sam2._C is not built."""
    from sam2.utils.misc import fill_holes_in_mask_scores, get_connected_components
    from scipy import ndimage

    rng = np.random.default_rng(0)
    masks = torch.from_numpy(rng.random((2, 1, 24, 32)) > 0.6)
    labels, areas = get_connected_components(masks)
    for n in range(2):
        ref_labels, count = ndimage.label(masks[n, 0].numpy(), structure=np.ones((3, 3)))
        ref_areas = np.bincount(ref_labels.ravel())[ref_labels] * (ref_labels > 0)
        assert np.array_equal(labels[n, 0].numpy() > 0, ref_labels > 0)
        assert np.array_equal(areas[n, 0].numpy(), ref_areas)
    scores = torch.full((1, 1, 20, 20), 5.0)
    scores[0, 0, 5:7, 5:8] = -3.0  # a 6-px hole: filled
    scores[0, 0, 12:16, 12:16] = -3.0  # a 16-px hole: kept
    filled = fill_holes_in_mask_scores(scores, 8)
    assert (filled[0, 0, 5:7, 5:8] > 0).all() and (filled[0, 0, 12:16, 12:16] < 0).all()


def test_drives_the_tracking_stage_b(predictor, video):
    """The orchestration of tracking.py runs on this predictor: a mask for every frame of the video."""
    from decaf_backend.tracking import run_stage_b

    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[20:40, 30:50] = True
    masks = run_stage_b(predictor, video, [3], [mask])
    assert len(masks) == NUM_FRAMES and masks[3].shape == (HEIGHT, WIDTH)
    assert (masks[3] == mask).mean() > 0.98


def test_stage_a_encodes_each_key_frame_once_and_matches_the_one_frame_cache(predictor, monkeypatch) -> None:
    from decaf_backend.points import FramePoints
    from decaf_backend.sam2 import predictor as sam2_predictor
    from decaf_backend.tracking import run_stage_a

    key_frames = list(moving_square(6, HEIGHT, WIDTH))
    xy = np.array([[0.3, 0.5], [0.7, 0.4]], dtype=np.float32)
    points = [FramePoints(xy, np.zeros((2, 2), int), np.array([0.9, 0.85], np.float32)) for _ in key_frames]
    points[2] = None  # a key frame without candidates

    encoded = []
    forward_image = predictor.model.forward_image
    monkeypatch.setattr(
        predictor.model, "forward_image", lambda image: encoded.append(1) or forward_image(image)
    )
    cached = run_stage_a(predictor, key_frames, points)
    assert len(encoded) == len(key_frames)

    encoded.clear()
    monkeypatch.setattr(
        sam2_predictor, "FEATURE_CACHE_FRAMES", 0
    )  # sam2's own behaviour: the last frame only
    uncached = run_stage_a(predictor, key_frames, points)
    assert len(encoded) > 3 * len(key_frames)
    assert cached.tracklets and [t.score for t in cached.tracklets] == [t.score for t in uncached.tracklets]
    for a, b in zip(cached.tracklets, uncached.tracklets):
        np.testing.assert_array_equal(a.masks(), b.masks())


def test_stage_b_forgets_old_frame_memories_without_changing_the_masks(predictor, monkeypatch) -> None:
    from decaf_backend.tracking import run_stage_b

    frames = list(moving_square(90, HEIGHT, WIDTH))  # long enough to leave the memory reach (17 frames)
    prompt = np.zeros((HEIGHT, WIDTH), bool)
    prompt[20:40, 6 + 8 * 12 : 26 + 8 * 12] = True  # the square on frame 12
    held = []
    init_state = predictor.init_state
    monkeypatch.setattr(predictor, "init_state", lambda frames: held.append(init_state(frames)) or held[-1])

    lean = run_stage_b(predictor, frames, [12], [prompt])
    lean_outputs = len(held[-1]["output_dict_per_obj"][0]["non_cond_frame_outputs"])
    monkeypatch.setattr(predictor, "forget_tracking_history", lambda state: None, raising=False)
    full = run_stage_b(predictor, frames, [12], [prompt])
    full_outputs = len(held[-1]["output_dict_per_obj"][0]["non_cond_frame_outputs"])

    assert full_outputs == len(frames) - 1  # sam2 keeps every tracked frame
    assert lean_outputs < full_outputs
    assert sum(int(m.sum()) for m in full) > 0
    np.testing.assert_array_equal(lean.to_array(), full.to_array())
