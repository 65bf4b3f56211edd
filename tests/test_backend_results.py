"""Masks <-> Label Studio result JSON: brush RLE per frame with item_index, and videorectangle tracks."""

from __future__ import annotations

from pathlib import Path

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
    track_boxes,
    track_item,
    visible_frames,
)
from decaf_backend.backend.schema import ObjectSpec, parse_schema
from decaf_backend.types import FrameMasks

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
    with pytest.raises(ValueError, match="not 20x40"):
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
