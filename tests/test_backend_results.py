"""Masks <-> Label Studio result JSON: brush RLE per frame with item_index, and videorectangle tracks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter import brush

from decaf_backend.backend.results import (
    VideoClock,
    brush_items,
    decode_brush,
    mask_bbox,
    masks_from_brush_items,
    region_id,
    segmentation_prediction,
    track_boxes,
    track_item,
    visible_frames,
)
from decaf_backend.backend.schema import ObjectSpec, parse_schema
from decaf_backend.confidence import ConfidenceRecorder, summary_score
from decaf_backend.review import MaskGeometry, frames_to_check
from decaf_backend.tracking import run_stage_b
from decaf_backend.types import FrameMasks, VideoInfo, VideoSegmentation
from tests.fakes import BlankFrames, FakeSam2Predictor

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"
OBJ = ObjectSpec("Object", "the disc")


def _masks(n: int = 5, h: int = 24, w: int = 40) -> FrameMasks:
    masks = FrameMasks(n, h, w)
    for f in range(n):
        if f != 2:  # frame 2 empty: the object is hidden there
            masks[f] = np.zeros((h, w), bool)
            masks.union(f, np.pad(np.ones((4 + f, 6), bool), ((3, h - 7 - f), (2 * f, w - 6 - 2 * f))))
    return masks


def test_brush_items_have_item_index_size_labels_and_decode_back() -> None:
    schema = parse_schema((CONFIGS / "frames_masks.xml").read_text())
    masks = _masks()
    items = brush_items(masks, OBJ, schema)
    assert [i["item_index"] for i in items] == list(range(5))
    for f, item in enumerate(items):
        assert item["type"] == "brushlabels" and item["from_name"] == "mask" and item["to_name"] == "image"
        assert (item["original_width"], item["original_height"], item["image_rotation"]) == (40, 24, 0)
        assert item["value"]["format"] == "rle" and item["value"]["brushlabels"] == ["Object"]
        assert item["id"] == region_id(OBJ, f)
        np.testing.assert_array_equal(decode_brush(item, 24, 40), masks[f])
    # the sdk's own decoder reads the same pixels (alpha channel = 255 inside)
    raw = brush.decode_rle(items[0]["value"]["rle"]).reshape(24, 40, 4)
    np.testing.assert_array_equal(raw[..., 3] == 255, masks[0])
    back = masks_from_brush_items(items, 5, 24, 40)
    np.testing.assert_array_equal(back.to_array(), masks.to_array())
    assert [i["item_index"] for i in brush_items(masks, OBJ, schema, skip_empty=True)] == [0, 1, 3, 4]
    with pytest.raises(ValueError, match="not describe a 40x20"):
        decode_brush(items[0], 20, 40)


def test_track_has_a_keyframe_per_visible_frame_and_hides_the_gap() -> None:
    schema = parse_schema((CONFIGS / "video_tracks.xml").read_text())
    masks = _masks()
    clock = VideoClock(fps=25.0, framerate=25.0, num_frames=5)
    item = track_item(masks, OBJ, schema, clock)
    assert item is not None and item["id"] == region_id(OBJ) and item["type"] == "videorectangle"
    value = item["value"]
    assert (
        value["framesCount"] == 5
        and value["duration"] == pytest.approx(0.2)
        and value["labels"] == ["Object"]
    )
    frames = [k["frame"] for k in value["sequence"]]
    assert frames == [1, 2, 4, 5]  # frame 3 (index 2) is empty: no keyframe
    assert [k["enabled"] for k in value["sequence"]] == [True, False, True, True]  # off after frame 2
    assert visible_frames(item) == {1, 2, 4, 5}
    for key in value["sequence"]:
        x0, y0, x1, y1 = mask_bbox(masks[key["frame"] - 1])
        assert key["x"] == pytest.approx(100 * x0 / 40) and key["width"] == pytest.approx(
            100 * (x1 - x0) / 40
        )
        assert key["y"] == pytest.approx(100 * y0 / 24) and key["height"] == pytest.approx(
            100 * (y1 - y0) / 24
        )
        assert key["time"] == pytest.approx((key["frame"] - 1) / 25)
    boxes = track_boxes(item, clock, 40, 24)
    assert sorted(boxes) == [0, 3, 4]  # enabled keyframes only
    assert (boxes[3].x0, boxes[3].y0, boxes[3].x1, boxes[3].y1) == pytest.approx(mask_bbox(masks[3]))


def test_track_starts_with_a_hidden_copy_when_the_object_appears_late() -> None:
    schema = parse_schema((CONFIGS / "video_tracks.xml").read_text())
    masks = FrameMasks(6, 10, 10)
    for f in (3, 4, 5):
        masks[f] = np.pad(np.ones((2, 2), bool), 4)
    item = track_item(masks, OBJ, schema, VideoClock(10.0, 10.0, 6))
    assert [(k["frame"], k["enabled"]) for k in item["value"]["sequence"]] == [
        (3, False),
        (4, True),
        (5, True),
        (6, True),
    ]
    assert visible_frames(item) == {3, 4, 5, 6}  # one frame early, then the real track
    assert track_item(FrameMasks(6, 10, 10), OBJ, schema, VideoClock(10.0, 10.0, 6)) is None


def test_clock_maps_between_video_fps_and_config_framerate() -> None:
    same = VideoClock(25.0, 25.0, 50)
    assert (same.to_ls(0), same.to_ls(49), same.from_ls(1), same.from_ls(50), same.ls_frames_count) == (
        1,
        50,
        0,
        49,
        50,
    )
    half = VideoClock(fps=12.5, framerate=25.0, num_frames=50)  # 4 s of video shown at 25 fps
    assert half.ls_frames_count == 100 and half.to_ls(10) == 21 and half.from_ls(21) == 10
    assert half.from_ls(1000) == 49 and half.from_ls(-3) == 0


# -------------------------------------------------------------------------- what the model thought, per frame


class SignallingPredictor(FakeSam2Predictor):
    """The golden fake SAM2 plus scripted per-frame signals: frame f gets object score `logits[f]` and predicted
    IoU `ious[f]` (what Sam2VideoPredictor.frame_signals reads from sam2)."""

    def __init__(self, logits: list[float], ious: list[float]) -> None:
        super().__init__(radius=4)
        self.logits, self.ious = logits, ious

    def frame_signals(self, state: Any, frame: int) -> dict[int, tuple[float, float]]:
        return {obj: (self.logits[frame], self.ious[frame]) for obj in state.objects}


def _tracked(n: int = 8) -> VideoSegmentation:
    """A disc tracked by stage B over n frames of a 24x40 video, with confidences from the scripted signals."""
    ious = [0.9, 0.92, 0.88, 0.3, 0.91, 0.9, 0.6, 0.93][:n]
    logits = [8.0, 8.0, 8.0, 8.0, 8.0, 0.2, 8.0, 8.0][:n]
    predictor = SignallingPredictor(logits, ious)
    prompt = np.zeros((24, 40), bool)
    prompt[8:16, 4:12] = True
    recorder = ConfidenceRecorder(predictor, n)
    masks = run_stage_b(predictor, BlankFrames(n, 24, 40), [0], [prompt], recorder)
    return VideoSegmentation(
        prompt="the moving disc",
        object_name="disc",
        video=VideoInfo(n, 10.0, 40, 24),
        key_frame_indices=[0],
        masks=masks,
        prompt_frames=[0],
        scores={"score": 0.7},
        frame_confidence=recorder.result(),
    )


def test_confidence_follows_the_signals_and_reaches_every_region_and_the_review_text() -> None:
    seg = _tracked()
    conf = seg.frame_confidence
    assert conf is not None and len(conf) == 8 and all(0.0 <= c <= 1.0 for c in conf)
    assert conf[3] < conf[6] < conf[0] and conf[5] < conf[0]  # low IoU on 3 and 6, doubtful presence on 5
    assert conf[1] != conf[2]  # different signals, different confidence
    schema = parse_schema((CONFIGS / "frames_masks.xml").read_text())
    assert schema.review_name == "review"
    pred = segmentation_prediction([(OBJ, seg)], schema, "v1")
    brushes = [r for r in pred["result"] if r["type"] == "brushlabels"]
    assert [b["score"] for b in brushes] == pytest.approx(conf, abs=1e-4)
    assert pred["score"] == pytest.approx(summary_score(conf))
    (review,) = [r for r in pred["result"] if r["type"] == "textarea"]
    assert (review["from_name"], review["to_name"]) == ("review", "image")
    text = review["value"]["text"]
    assert text[0] == "MLLM chose 'disc' for the prompt 'the moving disc'"
    assert text[1].startswith(f"Confidence {summary_score(conf):.2f} (lowest {conf[3]:.2f} on page 4)")
    checks = frames_to_check(MaskGeometry.of(seg.masks), conf, limit=5)
    assert checks[0].frame == 3, "the least confident frame is the first to check"
    assert text[2] == "Check first: " + "; ".join(
        f"page {c.frame + 1} ({', '.join(c.reasons)})" for c in checks
    )
    meta = brushes[3]["meta"]["text"]
    assert meta.startswith(f"page 4: confidence {conf[3]:.2f} · check #1: confidence {conf[3]:.2f}")
    assert "MLLM chose 'disc' for the prompt 'the moving disc'" in meta


def test_configs_without_the_review_tag_still_get_scores_and_details() -> None:
    seg = _tracked()
    bare = (CONFIGS / "frames_masks.xml").read_text()
    bare = bare.replace('<TextArea name="review"', '<TextArea name="notes"')  # an ordinary TextArea
    schema = parse_schema(bare)
    assert schema.review_name is None and schema.textarea_name is None
    pred = segmentation_prediction([(OBJ, seg)], schema, "v1")
    assert all(r["type"] == "brushlabels" for r in pred["result"]) and len(pred["result"]) == 8
    assert all("score" in r and "disc" in r["meta"]["text"] for r in pred["result"])
    # without SAM2 signals (a fake pipeline, masks read back from Label Studio): DecAF's own score, no numbers
    plain = replace(seg, frame_confidence=None)
    pred = segmentation_prediction([(OBJ, plain)], schema, "v1")
    assert pred["score"] == pytest.approx(0.7) and not any("score" in r for r in pred["result"])


def test_video_track_carries_confidence_per_keyframe_and_the_frames_to_check() -> None:
    seg = _tracked()
    schema = parse_schema((CONFIGS / "video_tracks.xml").read_text())
    assert schema.review_name == "review"
    pred = segmentation_prediction([(OBJ, seg)], schema, "v1")
    (track,) = [r for r in pred["result"] if r["type"] == "videorectangle"]
    keys = {k["frame"]: k for k in track["value"]["sequence"]}
    clock = VideoClock(seg.video.fps, schema.framerate, seg.video.num_frames)  # 10 fps shown at 25
    for f, c in enumerate(seg.frame_confidence):
        if clock.to_ls(f) in keys:
            assert keys[clock.to_ls(f)]["score"] == pytest.approx(c, abs=1e-4)
    assert track["score"] == pytest.approx(summary_score(seg.frame_confidence), abs=1e-4)
    weakest = f"frame {clock.to_ls(3)} ("  # the player's frame of decoded frame 3
    assert f"check first: {weakest}" in track["meta"]["text"]
    (review,) = [r for r in pred["result"] if r["type"] == "textarea"]
    assert review["to_name"] == "video" and review["value"]["text"][2].startswith(f"Check first: {weakest}")


def test_the_most_doubtful_object_sets_the_prediction_score() -> None:
    seg = _tracked()
    sure = replace(seg, frame_confidence=[0.95] * 8, object_name="ball")
    schema = parse_schema((CONFIGS / "frames_masks.xml").read_text())
    other = ObjectSpec("Other", "the ball")
    pred = segmentation_prediction([(OBJ, seg), (other, sure)], schema, "v1")
    assert pred["score"] == pytest.approx(min(summary_score(seg.frame_confidence), 0.95))
    (review,) = [r for r in pred["result"] if r["type"] == "textarea"]
    assert review["value"]["text"][0].startswith("Object: MLLM chose 'disc'")
    assert any(line.startswith("Other: MLLM chose 'ball'") for line in review["value"]["text"])
    # a correction of one object keeps the other's lines in the review text, not its regions
    fixed = segmentation_prediction([(other, sure)], schema, "v1", unchanged=[(OBJ, seg)])
    assert {r["value"]["brushlabels"][0] for r in fixed["result"] if r["type"] == "brushlabels"} == {"Other"}
    (review,) = [r for r in fixed["result"] if r["type"] == "textarea"]
    assert any(line.startswith("Object: MLLM chose 'disc'") for line in review["value"]["text"])


def test_review_box_is_told_apart_from_the_prompt_box() -> None:
    schema = parse_schema((CONFIGS / "frames_masks_textarea.xml").read_text())
    assert (schema.textarea_name, schema.review_name) == ("prompt", "review")
    marked = """<View><TextArea name="notes" toName="image" review="true"/><Image name="image" valueList="$frames"/>
    <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels></View>"""
    assert parse_schema(marked).review_name == "notes"
