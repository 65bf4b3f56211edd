"""Clicks and boxes from an interactive request's `params.context` (what the browser sends, docs/ls-browser.md §2).

Frames layout: smart `keypointlabels` items (percent coordinates, `item_index` = the page, `is_positive` false on
Alt+click) and `rectanglelabels` items become Click/Box prompts on their own frame, in the context's order. The
browser resends every pending point of one label, possibly from other frames: each point stays a prompt for its own
frame, and the request's whole list is what the answer depends on (corrections.py). A label named like "Negative"
(or marked negative="true") makes its points negative.

Video layout: `videorectangle` items; each enabled keyframe that differs from every box the backend showed on that
frame (its current track and the tracks it predicted before; so the annotator drew or moved it) becomes a box
prompt on that frame. The same rule serves interactive requests and submitted annotations (the webhook).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PromptOutOfRangeError
from ..types import Box, Click, PromptsByKind
from .errors import RequestError
from .results import VideoClock, keyframe_box
from .schema import Schema

BOX_MATCH_TOLERANCE = 0.005  # keyframes within 0.5 % of the frame size of our own box are not new prompts

# what the backend showed on a frame for an object's label: one box, several (earlier tracks too), or none
KnownBox = Callable[[str | None, int], Box | Sequence[Box] | None]


@dataclass
class ObjectPrompts(PromptsByKind):
    """The prompts for one object: `label` names it (None: a generic click label, the caller picks the object)."""

    label: str | None
    prompts: list[Click | Box] = field(default_factory=list)  # in the order the context lists them

    @property
    def empty(self) -> bool:
        return not self.prompts


@dataclass(frozen=True)
class Frame:
    num_frames: int
    width: int
    height: int


def context_items(context: Any) -> list[Mapping[str, Any]]:
    """The `result` list of a context, checked; [] for a context-less request."""
    if context is None:
        return []
    if not isinstance(context, Mapping):
        raise RequestError(
            f"params.context must be an object with a 'result' list, not {type(context).__name__}"
        )
    items = context.get("result", [])
    if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
        raise RequestError("params.context.result must be a list of Label Studio result objects")
    return items


def is_interactive(context: Any) -> bool:
    return bool(context_items(context))


def parse_prompts(
    context: Any,
    schema: Schema,
    frame: Frame,
    clock: VideoClock | None = None,
    known_box: KnownBox | None = None,
) -> list[ObjectPrompts]:
    """Group the context's clicks/boxes per object label (order of first appearance)."""
    groups: dict[tuple[str | None, str | None], ObjectPrompts] = {}

    def group(label: str | None, region: str | None = None) -> ObjectPrompts:
        """Unlabelled video regions stay apart (each may be another object); unlabelled clicks share one group."""
        key = (label, region if label is None else None)
        return groups.setdefault(key, ObjectPrompts(label))

    for item in context_items(context):
        kind = item.get("type")
        if schema.layout == "frames" and kind == "keypointlabels":
            label, negative = _click_label(item, schema)
            click = _click(item, frame, negative)
            group(label).prompts.append(click)
        elif schema.layout == "frames" and kind == "rectanglelabels":
            label = _object_label(item, "rectanglelabels", schema)
            group(label).prompts.append(_rect_box(item, frame))
        elif schema.layout == "video" and kind == "videorectangle":
            if clock is None:
                raise ValueError("a VideoClock is needed for video tracks")
            label = _object_label(item, "labels", schema)
            group(label, str(item.get("id") or "")).prompts.extend(
                _changed_keyframes(item, frame, clock, label, known_box)
            )
    return [g for g in groups.values() if not g.empty]


def _labels_of(item: Mapping[str, Any], key: str) -> list[str]:
    value = item.get("value")
    if not isinstance(value, Mapping):
        raise RequestError(f"context item {item.get('id')!r} has no 'value' object")
    labels = value.get(key) or value.get("labels") or []
    if not isinstance(labels, list):
        raise RequestError(f"context item {item.get('id')!r}: value.{key} must be a list")
    return [str(v) for v in labels]


def _object_label(item: Mapping[str, Any], key: str, schema: Schema) -> str | None:
    labels = _labels_of(item, key)
    if not labels:
        return None
    schema.check_label(labels[0])
    return labels[0]


def _click_label(item: Mapping[str, Any], schema: Schema) -> tuple[str | None, bool]:
    """(object label or None for a generic click label, whether the label itself means negative)."""
    labels = _labels_of(item, "keypointlabels")
    if not labels:
        return None, False
    name = labels[0]
    if name in schema.labels:
        return name, False
    if name in schema.click_labels:
        return None, schema.click_labels[name]
    known = sorted(set(schema.labels) | set(schema.click_labels))
    raise RequestError(f"unknown label '{name}' in the clicks: the config knows {known}")


def _percent(value: Mapping[str, Any], key: str, item: Mapping[str, Any]) -> float:
    try:
        return float(value[key])
    except (KeyError, TypeError, ValueError):
        raise RequestError(
            f"context item {item.get('id')!r}: value.{key} is missing or not a number"
        ) from None


def _frame_index(item: Mapping[str, Any], frame: Frame) -> int:
    raw = item.get("item_index", 0)
    if raw is None:
        raw = 0
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise RequestError(f"context item {item.get('id')!r}: item_index must be an integer, not {raw!r}")
    if not 0 <= raw < frame.num_frames:
        raise PromptOutOfRangeError(f"item_index {raw} is outside the task's {frame.num_frames} frames")
    return raw


def _click(item: Mapping[str, Any], frame: Frame, negative_label: bool) -> Click:
    value = item["value"]
    x, y = _percent(value, "x", item), _percent(value, "y", item)
    index = _frame_index(item, frame)
    if not (0.0 <= x <= 100.0 and 0.0 <= y <= 100.0):
        raise PromptOutOfRangeError(f"click at ({x:.1f} %, {y:.1f} %) on frame {index} is outside the frame")
    positive = bool(item.get("is_positive", True)) and not negative_label
    # LS gives percent of the natural image size; the media we decoded is that same image
    return Click(index, x * frame.width / 100.0, y * frame.height / 100.0, positive)


def _rect_box(item: Mapping[str, Any], frame: Frame) -> Box:
    value = item["value"]
    x, y = _percent(value, "x", item), _percent(value, "y", item)
    w, h = _percent(value, "width", item), _percent(value, "height", item)
    index = _frame_index(item, frame)
    _check_box(x, y, w, h, index)
    return Box(
        index,
        x * frame.width / 100,
        y * frame.height / 100,
        (x + w) * frame.width / 100,
        (y + h) * frame.height / 100,
    )


def _check_box(x: float, y: float, w: float, h: float, frame_label: int) -> None:
    """Percent box (top-left + size) inside the frame, with a hair of float slack at the far edges."""
    if not (0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 100.0001 and y + h <= 100.0001):
        raise PromptOutOfRangeError(
            f"box ({x:.1f}, {y:.1f}, {w:.1f} x {h:.1f} %) on frame {frame_label} is outside the frame"
        )


def _changed_keyframes(
    item: Mapping[str, Any],
    frame: Frame,
    clock: VideoClock,
    label: str | None,
    known_box: KnownBox | None,
) -> list[Box]:
    sequence = item["value"].get("sequence") if isinstance(item.get("value"), Mapping) else None
    if not isinstance(sequence, list):
        raise RequestError(f"videorectangle {item.get('id')!r} has no value.sequence list")
    out = []
    for key in sequence:
        if not isinstance(key, Mapping) or not key.get("enabled", True):
            continue
        for name in ("frame", "x", "y", "width", "height"):
            _percent(key, name, item)
        f = int(key["frame"])
        if not 1 <= f <= clock.ls_frames_count:
            raise PromptOutOfRangeError(
                f"keyframe {f} is outside the video's frames 1..{clock.ls_frames_count}"
            )
        _check_box(*(float(key[k]) for k in ("x", "y", "width", "height")), f)
        box = keyframe_box(key, clock, frame.width, frame.height)
        ours = known_box(label, box.frame) if known_box is not None else None
        shown = [ours] if isinstance(ours, Box) else list(ours or [])
        if any(_same_box(b, box, frame) for b in shown):
            continue
        out.append(box)
    return out


def _same_box(a: Box, b: Box, frame: Frame) -> bool:
    tol_x, tol_y = BOX_MATCH_TOLERANCE * frame.width, BOX_MATCH_TOLERANCE * frame.height
    return (
        abs(a.x0 - b.x0) <= tol_x
        and abs(a.x1 - b.x1) <= tol_x
        and abs(a.y0 - b.y0) <= tol_y
        and abs(a.y1 - b.y1) <= tol_y
    )
