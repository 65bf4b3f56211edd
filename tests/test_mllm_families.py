"""LLaVA-OneVision, InternVL3 and Qwen3-VL adapters on their tiny random checkpoints (tiny_models fixture).

Each family is checked against the model's own parts: the prompt ids against its processor + chat
template (the processor's own visual expansion, minus exactly what the reference leaves out: LLaVA-OV's
newline tokens and base image, InternVL's thumbnail tile), and our streamed rollout from captured Q/K
against the literal full-matrix rollout from the same model's eager fp32 attentions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from decaf_backend.config import DecafConfig
from decaf_backend.mllm import load_mllm, prompts
from decaf_backend.mllm.base import MLLMAdapter
from decaf_backend.mllm.qwen import resize_frame

from .conftest import moving_disc_frames

FAMILIES = ("internvl3", "llava_onevision", "qwen3_vl")
EXPRESSION = "the red disc moving right"


@pytest.fixture(scope="module")
def adapters(tiny_models: dict[str, Path]) -> dict:
    config = DecafConfig(max_new_tokens=3, frame_batch_size=2)
    return {
        kind: load_mllm(tiny_models[kind], device="cpu", dtype="fp32", config=config) for kind in FAMILIES
    }


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """Three key frames (odd: Qwen3-VL pads a frame pair) of a wide size (several tiles per frame)."""
    return list(moving_disc_frames(3, 64, 128))


def _messages(adapter, kind: str | None, question: str) -> list[dict]:
    content = ([] if kind is None else [{"type": kind}]) + [{"type": "text", "text": question}]
    messages = [{"role": "user", "content": content}]
    if adapter.system_prompt is not None:
        system = [{"type": "text", "text": adapter.system_prompt}]
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _processor_ids(adapter, kind: str, question: str, clip: list[np.ndarray]) -> torch.Tensor:
    """(1, L) ids the family's own processor writes for one prompt with the key frames (video) or frame 0."""
    processor = adapter.processor
    text = processor.apply_chat_template(
        _messages(adapter, kind, question), add_generation_prompt=True, tokenize=False
    )
    if adapter.model_type == "qwen3_vl":  # our Qwen sizing, the processor's own layout and timestamps
        from transformers.video_utils import VideoMetadata

        if kind == "video":
            frames = [resize_frame(f, adapter.video_size(*f.shape[:2])) for f in clip]
            frames.append(frames[-1])
            meta = VideoMetadata(total_num_frames=4, fps=2.0, frames_indices=[0, 1, 2, 3])
            out = processor(text=[text], videos=[np.stack(frames)], video_metadata=[meta], do_resize=False,
                            do_sample_frames=False, return_tensors="pt")  # fmt: skip
        else:
            image = resize_frame(clip[0], adapter.frame_size(*clip[0].shape[:2]))
            out = processor(text=[text], images=[image], do_resize=False, return_tensors="pt")
    elif kind == "video":
        out = processor(text=[text], videos=[np.stack(clip)], return_tensors="pt")
    else:
        out = processor(text=[text], images=[clip[0]], return_tensors="pt")
    return out["input_ids"]


def _keep_first(ids: torch.Tensor, token: int, keep: int) -> list[int]:
    """`ids` (1, L) with every `token` after the first `keep` of them removed."""
    out, seen = [], 0
    for i in ids[0].tolist():
        seen += i == token
        if i != token or seen <= keep:
            out.append(i)
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["video", "image"])
def test_prompt_ids_and_visual_grid_follow_the_models_own_processor(adapters, clip, family, kind) -> None:
    adapter = adapters[family]
    assert isinstance(adapter, MLLMAdapter)
    question = prompts.background_prompt("disc")
    visual = adapter.encode_video(clip) if kind == "video" else adapter.encode_frames(clip)
    ours = adapter.prompt_ids(question, visual)
    theirs = _processor_ids(adapter, kind, question, clip)
    mask = adapter._visual_mask(ours, visual)
    token = int(ours[0][mask[0]][0])
    t, h, w = visual.map_shape
    assert int(mask.sum()) == t * h * w
    if family == "qwen3_vl" or (family == "internvl3" and kind == "video"):
        # the reference layout is the processor's own (Qwen3-VL: with its timestamps)
        assert ours[0].tolist() == theirs[0].tolist()
        if family == "qwen3_vl":  # 2×2 spatial merge; video: one map slice per frame pair
            grid = [int(v) for v in visual.grid_thw[0]]
            expected = (grid[0] if kind == "video" else 1, grid[1] // 2, grid[2] // 2)
            assert (t, h, w) == expected and (kind == "image" or t == 2)
    elif family == "internvl3":
        # frames: the processor adds a thumbnail tile after the grid tiles; the reference drops it
        rows, cols = visual.layout["tiles_hw"]
        assert rows * cols > 1 and (h, w) == (rows * adapter.tile_side, cols * adapter.tile_side)
        assert int((theirs == token).sum()) == (rows * cols + 1) * adapter.tokens_per_tile
        assert ours[0].tolist() == _keep_first(theirs, token, keep=h * w)
    elif kind == "video":
        # LLaVA-OV: frames × pooled grid, no temporal merge; the processor adds one newline token at the end
        assert (t, h, w) == (len(clip), 4, 4)
        assert ours[0].tolist() == _keep_first(theirs, token, keep=t * h * w)
    else:
        # LLaVA-OV frames: the processor writes the base image, then h' rows of (w' + newline); the
        # reference keeps the unpadded grid only
        side = adapter.patches_per_side
        assert int((theirs == token).sum()) == side * side + h * (w + 1)
        assert len(ours[0]) == len(theirs[0]) - side * side - h
    # the visual tokens map onto the grid in sequence order, one map per prompt
    values = np.arange(t * h * w, dtype=np.float32)
    assert adapter._tokens_to_map(values, visual).shape == visual.map_shape


def _literal_rollout(attentions, layers, positions: torch.Tensor) -> torch.Tensor:
    """Spec §4 as written: full L×L matrices, head weights, residual, R ← Ã_l · R; the last row (fp64)."""
    rollout = None
    for layer in layers:
        probs = attentions[layer].double()  # (B, H, L, L)
        row_max = probs[..., positions].amax(dim=-1)
        score = row_max.mean(dim=-1)
        weights = score / score.amax(dim=-1, keepdim=True)
        mixed = (weights[..., None, None] * probs).mean(dim=1)
        eye = torch.eye(probs.shape[-1], dtype=torch.float64)
        layer_matrix = 0.5 * mixed + 0.5 * eye
        rollout = layer_matrix if rollout is None else layer_matrix @ rollout
    return rollout[:, -1]


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_rollout_equals_full_matrix_rollout(adapters, clip, family) -> None:
    adapter = adapters[family]
    question = prompts.object_class_prompt(EXPRESSION)
    for visual in (adapter.encode_video(clip), adapter.encode_frames(clip)):
        ids_one = adapter.prompt_ids(question, visual)
        ours = adapter._run(visual, question, generate=False)
        positions = adapter.visual_positions(ids_one, visual)
        if not adapter.exact_visual_positions:  # the reference's span from first to last visual token
            positions = torch.arange(int(positions[0]), int(positions[-1]) + 1)
        ids = ids_one.expand(visual.items, -1)
        model = adapter.model
        model.set_attn_implementation("eager")
        try:
            with torch.inference_mode():
                out = model(
                    **adapter._model_inputs(ids, visual, 0, visual.items),
                    output_attentions=True,
                    use_cache=False,
                )
        finally:
            model.set_attn_implementation("sdpa")
        assert len(out.attentions) == adapter.num_layers and out.attentions[-1].dtype == torch.float32
        expected = _literal_rollout(out.attentions, adapter.rollout_layers, positions)
        np.testing.assert_allclose(ours.rollout, expected.numpy(), atol=1e-5, rtol=0)
        assert ours.attention_map.shape == (visual.items * visual.map_shape[0], *visual.map_shape[1:])
        assert ours.attention_map.max() > 0


def test_default_rollout_layers_start_at_half_depth(adapters) -> None:
    for adapter in adapters.values():
        assert adapter.num_layers == 4 and list(adapter.rollout_layers) == [2, 3]


def test_internvl3_14b_rollout_layers_are_24_to_47(adapters) -> None:
    """Spec §4 table: the 48-layer InternVL3-14B rolls out over layers 24–47 (half depth)."""
    from decaf_backend.mllm.internvl import InternVLAdapter

    adapter = adapters["internvl3"]
    config = adapter.model.config
    depth = config.text_config.num_hidden_layers
    config.text_config.num_hidden_layers = 48
    try:
        deep = InternVLAdapter(adapter.model, adapter.processor, DecafConfig())
    finally:
        config.text_config.num_hidden_layers = depth
    assert list(deep.rollout_layers) == list(range(24, 48))


@pytest.mark.parametrize("family", FAMILIES)
def test_object_and_background_prompts_share_one_vision_encoding(adapters, clip, family, monkeypatch) -> None:
    adapter = adapters[family]
    adapter.clear_cache()
    calls = []
    for hook in ("_encode_video", "_encode_frames"):
        original = getattr(adapter, hook)

        def counted(frames, _original=original, _hook=hook):
            calls.append(_hook)
            return _original(frames)

        monkeypatch.setattr(adapter, hook, counted)
    obj_video, obj_frames = adapter.object_class(clip, EXPRESSION)
    bg_video, bg_frames = adapter.background(clip, "disc")
    assert sorted(calls) == ["_encode_frames", "_encode_video"]
    assert len(obj_video.answers) == 1 and len(obj_frames.answers) == len(clip)
    assert bg_video.answers is None and bg_frames.answers is None  # prefill only
    assert bg_video.attention_map.shape == obj_video.attention_map.shape
    assert not np.allclose(bg_video.rollout[0, -5:], obj_video.rollout[0, -5:])
