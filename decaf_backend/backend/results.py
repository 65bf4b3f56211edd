"""VideoSegmentation masks <-> Label Studio result JSON (brush RLE per frame with item_index; videorectangle tracks).

Label Studio stores any prediction JSON without checking it (docs/label-studio.md §2), so the shapes here follow what
the browser was seen to render (docs/ls-browser.md §1, §3, §4): every brush item carries `item_index`, original size
and `image_rotation`; a track has one keyframe per visible frame and `enabled: false` where the object disappears.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..export import brush_result, brush_result_mask
from ..types import Box, FrameMasks
from .schema import ObjectSpec, Schema


def region_id(obj: ObjectSpec, frame: int | None = None) -> str:
    """Stable ids: the frontend's accept replaces the region with the same id (no duplicate masks after a fix)."""
    return f"decaf-{obj.slug}" if frame is None else f"decaf-{obj.slug}-{frame}"


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixel edges of a mask's bounding box (x1/y1 exclusive), or None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def brush_items(
    masks: FrameMasks,
    obj: ObjectSpec,
    schema: Schema,
    frames: Iterable[int] | None = None,
    skip_empty: bool = False,
) -> list[dict[str, Any]]:
    """One `brushlabels` item per frame (all frames by default), RLE-encoded with the sdk."""
    items = []
    for f in range(masks.num_frames) if frames is None else frames:
        mask = masks[f]
        if skip_empty and not mask.any():
            continue
        items.append(
            brush_result(mask, f, schema.output_name, schema.object_name, region_id(obj, f), obj.label)
        )
    return items


def decode_brush(item: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of one brush RLE item, at the size of the task's frames."""
    return brush_result_mask(item, height, width)


def masks_from_brush_items(
    items: Sequence[Mapping[str, Any]], num_frames: int, height: int, width: int
) -> FrameMasks:
    """Union of the brush items per `item_index` (no index = frame 0, as the frontend reads it)."""
    masks = FrameMasks(num_frames, height, width)
    for item in items:
        f = int(item.get("item_index") or 0)
        if 0 <= f < num_frames:
            masks.union(f, decode_brush(item, height, width))
    return masks


@dataclass(frozen=True)
class VideoClock:
    """Maps decoded frame indices to Label Studio's 1-based <Video> frames (which count at the config framerate)."""

    fps: float  # the video file's frame rate
    framerate: float  # the <Video framerate> of the config
    num_frames: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0

    @property
    def ls_frames_count(self) -> int:
        return max(1, round(self.duration * self.framerate)) if self.fps > 0 else self.num_frames

    def to_ls(self, index: int) -> int:
        if self.fps <= 0 or abs(self.fps - self.framerate) < 1e-6:
            return index + 1
        return round(index / self.fps * self.framerate) + 1

    def from_ls(self, frame: int) -> int:
        if self.fps <= 0 or abs(self.fps - self.framerate) < 1e-6:
            index = int(frame) - 1
        else:
            index = round((float(frame) - 1) / self.framerate * self.fps)
        return min(max(index, 0), self.num_frames - 1)

    def time(self, ls_frame: int) -> float:
        return (ls_frame - 1) / self.framerate


def track_item(
    masks: FrameMasks, obj: ObjectSpec, schema: Schema, clock: VideoClock
) -> dict[str, Any] | None:
    """One `videorectangle` item: a keyframe per visible frame; `enabled: false` on the last frame before a gap.

    The frontend shows a disabled keyframe on its own frame only and hides the box until the next keyframe; before
    the first keyframe it shows that keyframe's box, so a disabled copy goes one frame before the first appearance.
    """
    keys: list[dict[str, Any]] = []
    for f in range(masks.num_frames):
        ls_frame = clock.to_ls(f)
        if (
            keys and keys[-1]["frame"] == ls_frame
        ):  # video fps above the config framerate: one key per LS frame
            continue
        box = mask_bbox(masks[f])
        if box is None:
            if keys and keys[-1]["enabled"]:
                keys[-1]["enabled"] = False  # the object is gone after this frame
            continue
        x0, y0, x1, y1 = box
        keys.append(
            {
                "frame": ls_frame,
                "enabled": True,
                "rotation": 0,
                "x": 100.0 * x0 / masks.width,
                "y": 100.0 * y0 / masks.height,
                "width": 100.0 * (x1 - x0) / masks.width,
                "height": 100.0 * (y1 - y0) / masks.height,
                "time": clock.time(ls_frame),
            }
        )
    if not keys:
        return None
    if keys[0]["frame"] > 1:
        lead = keys[0]["frame"] - 1
        keys.insert(0, dict(keys[0], frame=lead, time=clock.time(lead), enabled=False))
    value: dict[str, Any] = {
        "framesCount": clock.ls_frames_count,
        "duration": clock.duration,
        "sequence": keys,
    }
    if obj.label is not None:
        value["labels"] = [obj.label]
    return {
        "id": region_id(obj),
        "from_name": schema.output_name,
        "to_name": schema.object_name,
        "type": "videorectangle",
        "value": value,
    }


def visible_frames(item: Mapping[str, Any]) -> set[int]:
    """The 1-based LS frames where a track's box shows (the frontend's lifespan rule, no interpolation beyond keys)."""
    keys = sorted((item.get("value") or {}).get("sequence") or [], key=lambda k: k["frame"])
    out: set[int] = set()
    for key, nxt in zip(keys, keys[1:] + [None]):
        out.add(int(key["frame"]))
        if key.get("enabled", True):
            end = (
                int(nxt["frame"])
                if nxt is not None
                else int((item.get("value") or {}).get("framesCount", 0)) + 1
            )
            out.update(range(int(key["frame"]), end))
    return out


def keyframe_box(key: Mapping[str, Any], clock: VideoClock, width: int, height: int) -> Box:
    """A VideoRectangle keyframe (percent, top-left + size, 1-based LS frame) as a pixel Box on a decoded frame."""
    x, y = float(key["x"]), float(key["y"])
    w, h = float(key["width"]), float(key["height"])
    return Box(
        clock.from_ls(int(key["frame"])),
        x * width / 100,
        y * height / 100,
        (x + w) * width / 100,
        (y + h) * height / 100,
    )


def track_boxes(item: Mapping[str, Any], clock: VideoClock, width: int, height: int) -> dict[int, Box]:
    """The enabled keyframes of a track as {decoded frame index: Box} (no interpolation)."""
    out = {}
    for key in (item.get("value") or {}).get("sequence") or []:
        if key.get("enabled", True):
            box = keyframe_box(key, clock, width, height)
            out[box.frame] = box
    return out


def prediction(results: list[dict[str, Any]], score: float, model_version: str) -> dict[str, Any]:
    return {"result": results, "score": float(score), "model_version": model_version}
