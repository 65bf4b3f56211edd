"""Clicks and boxes from `params.context`, in the exact shapes Label Studio 1.23.2's browser sends
(../shared/docs/ls-browser.md §2 and label-studio.md §2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from decaf_backend.backend.context import Frame, context_items, is_interactive, parse_prompts
from decaf_backend.backend.errors import RequestError
from decaf_backend.backend.results import VideoClock
from decaf_backend.backend.schema import parse_schema
from decaf_backend.errors import PromptOutOfRangeError
from decaf_backend.types import Box, Click

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"
FRAMES = parse_schema((CONFIGS / "frames_masks.xml").read_text())
VIDEO = parse_schema((CONFIGS / "video_tracks.xml").read_text())
SIZE = Frame(num_frames=4, width=320, height=240)

# the first positive click on frame 3 of 4, exactly as the browser sent it
BROWSER_CLICK = {
    "original_width": 320,
    "original_height": 240,
    "image_rotation": 0,
    "item_index": 2,
    "value": {
        "x": 56.22688039457459,
        "y": 41.59473900534319,
        "width": 0.2466091245376079,
        "labels": ["Object"],
        "keypointlabels": ["Object"],
    },
    "is_positive": True,
    "id": "RL3KhPd74m",
    "from_name": "click",
    "to_name": "image",
    "type": "keypointlabels",
    "origin": "manual",
}


def _click(x: float, y: float, index: int, label: str = "Object", positive: bool = True) -> dict:
    value = {"x": x, "y": y, "width": 0.25, "labels": [label], "keypointlabels": [label]}
    return dict(BROWSER_CLICK, item_index=index, value=value, is_positive=positive)


def test_browser_click_becomes_a_pixel_click_on_its_page() -> None:
    (group,) = parse_prompts({"result": [BROWSER_CLICK]}, FRAMES, SIZE)
    assert group.label == "Object" and group.boxes == []
    (click,) = group.clicks
    assert click.frame == 2 and click.positive
    assert click.x == pytest.approx(56.22688039457459 * 320 / 100) and click.y == pytest.approx(
        41.59473900534319 * 240 / 100
    )


def test_pending_points_of_other_frames_stay_prompts_for_their_own_frames() -> None:
    # step 6 of the browser table: three points of page idx 1 come along with an Alt+click on idx 2
    ctx = {
        "result": [
            _click(10, 10, 1),
            _click(20, 20, 1),
            _click(30, 30, 1, positive=False),
            _click(50, 50, 2, positive=False),
        ]
    }
    (group,) = parse_prompts(ctx, FRAMES, SIZE)
    assert [(c.frame, c.positive) for c in group.clicks] == [(1, True), (1, True), (1, False), (2, False)]
    assert group.clicks[-1] == Click(2, 160.0, 120.0, False)


def test_negative_label_makes_negative_generic_clicks() -> None:
    # step 5: the "Negative" label without Alt arrives as is_positive true; the label decides
    (group,) = parse_prompts({"result": [_click(40, 40, 1, label="Negative")]}, FRAMES, SIZE)
    assert group.label is None and [c.positive for c in group.clicks] == [False]


@pytest.mark.parametrize(
    "context, error, message",
    [
        ({"result": [_click(101, 40, 1)]}, PromptOutOfRangeError, "outside the frame"),
        ({"result": [_click(40, 40, 7)]}, PromptOutOfRangeError, "item_index 7"),
        ({"result": [_click(40, 40, 1, label="Cat")]}, RequestError, "unknown label 'Cat'"),
        (
            {"result": [dict(BROWSER_CLICK, value={"y": 3, "keypointlabels": ["Object"]})]},
            RequestError,
            "value.x",
        ),
        ({"result": [dict(BROWSER_CLICK, item_index="2")]}, RequestError, "item_index must be an integer"),
        ({"result": "nope"}, RequestError, "must be a list"),
        (["not", "an", "object"], RequestError, "must be an object"),
    ],
)
def test_malformed_contexts_get_clear_errors(context: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        parse_prompts(context, FRAMES, SIZE)


def test_context_less_requests_are_not_interactive() -> None:
    assert not is_interactive(None) and not is_interactive({"result": []}) and context_items(None) == []
    assert is_interactive({"result": [BROWSER_CLICK]})


def test_rectangles_on_a_page_become_box_prompts() -> None:
    schema = parse_schema(
        '<View><Image name="image" valueList="$frames"/><BrushLabels name="mask" toName="image"><Label value="A"/>'
        '</BrushLabels><RectangleLabels name="r" toName="image"><Label value="A"/></RectangleLabels></View>'
    )
    rect = {
        "type": "rectanglelabels",
        "item_index": 3,
        "value": {"x": 10, "y": 20, "width": 50, "height": 25, "rectanglelabels": ["A"]},
    }
    (group,) = parse_prompts({"result": [rect]}, schema, SIZE)
    assert group.label == "A" and group.boxes == [Box(3, 32.0, 48.0, 192.0, 108.0)]


def _track(keys: list[dict], rid: str = "abc", labels: list[str] | None = None) -> dict:
    value = {"framesCount": 50, "duration": 2, "sequence": keys}
    if labels:
        value["labels"] = labels
    return {
        "id": rid,
        "type": "videorectangle",
        "from_name": "box",
        "to_name": "video",
        "origin": "manual",
        "value": value,
    }


def _key(frame: int, x: float, y: float, w: float, h: float, enabled: bool = True) -> dict:
    return {
        "frame": frame,
        "enabled": enabled,
        "rotation": 0,
        "x": x,
        "y": y,
        "width": w,
        "height": h,
        "time": (frame - 1) / 25,
    }


def test_video_box_from_label_studio_doc_becomes_a_box_prompt() -> None:
    clock = VideoClock(25.0, 25.0, 50)
    ctx = {"result": [_track([_key(5, 20, 30, 25, 35)], labels=["Object"])]}
    (group,) = parse_prompts(ctx, VIDEO, Frame(50, 320, 240), clock)
    assert group.label == "Object"
    assert group.boxes == [Box(4, 64.0, 72.0, 144.0, 156.0)]


def test_only_keyframes_that_differ_from_our_track_are_prompts() -> None:
    clock, size = VideoClock(25.0, 25.0, 50), Frame(50, 320, 240)
    ours = {f: Box(f, 32.0, 24.0, 96.0, 72.0) for f in range(50)}
    keys = [_key(f + 1, 10, 10, 20, 20) for f in range(10)]
    keys[6] = _key(7, 40, 40, 20, 20)  # the annotator moved the box on frame 7
    keys.append(_key(11, 50, 50, 10, 10, enabled=False))  # disabled keyframes never prompt
    ctx = {"result": [_track(keys)]}
    (group,) = parse_prompts(ctx, VIDEO, size, clock, known_box=lambda label, f: ours.get(f))
    assert group.label is None and [b.frame for b in group.boxes] == [6]
    assert (
        parse_prompts({"result": [_track(keys[:6])]}, VIDEO, size, clock, lambda label, f: ours.get(f)) == []
    )
    with pytest.raises(PromptOutOfRangeError, match="keyframe 99"):
        parse_prompts({"result": [_track([_key(99, 1, 1, 5, 5)])]}, VIDEO, size, clock)
