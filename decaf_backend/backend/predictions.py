"""Reading what Label Studio stored back: our predictions of a task, an object's items in them, the masks or box
tracks they hold, and the masks an annotator now has in its draft (after accepting a suggestion)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..types import Box, FrameMasks
from .results import VideoClock, masks_from_brush_items, region_id, track_boxes
from .schema import ObjectSpec, Schema

log = logging.getLogger(__name__)


def our_predictions(task: Mapping[str, Any], model_version: str) -> list[Mapping[str, Any]]:
    """The task's predictions of this model version, newest first."""
    ours = [
        p
        for p in task.get("predictions") or []
        if isinstance(p, Mapping) and p.get("model_version") == model_version
    ]
    return sorted(ours, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0), reverse=True)


def is_object_item(item: Mapping[str, Any], obj: ObjectSpec) -> bool:
    """Whether a result item is one of `obj`'s regions: our region id, else the object's label."""
    if str(item.get("id", "")).startswith(region_id(obj)):
        return True
    value = item.get("value") or {}
    labels = value.get("brushlabels") or value.get("labels") or []
    return obj.label is not None and labels == [obj.label]


def object_items(
    results: Any, schema: Schema, obj: ObjectSpec, kind: str | None = None
) -> list[Mapping[str, Any]]:
    """`obj`'s items of the output control in one result list (optionally of one `type`)."""
    return [
        r
        for r in results or []
        if isinstance(r, Mapping)
        and r.get("from_name") == schema.output_name
        and (kind is None or r.get("type") == kind)
        and is_object_item(r, obj)
    ]


def stored_masks(
    task: Mapping[str, Any], schema: Schema, obj: ObjectSpec, model_version: str, num_frames: int, height: int,
    width: int,
) -> FrameMasks | None:  # fmt: skip
    """The object's masks in the task's latest prediction of ours (frames layout), or None."""
    ours = our_predictions(task, model_version)
    items = object_items(ours[0].get("result"), schema, obj) if ours else []
    return _decode(items, num_frames, height, width, task.get("id"), "stored masks")


def draft_masks(
    task: Mapping[str, Any], schema: Schema, obj: ObjectSpec, num_frames: int, height: int, width: int
) -> FrameMasks | None:
    """The object's brush masks in the requesting annotator's newest draft (Label Studio sends only that user's
    drafts with an interactive request), or None when the draft holds none of them."""
    drafts = [d for d in task.get("drafts") or [] if isinstance(d, Mapping)]
    drafts.sort(key=lambda d: str(d.get("updated_at") or d.get("created_at") or ""), reverse=True)
    for draft in drafts:
        items = object_items(draft.get("result"), schema, obj, "brushlabels")
        if items:
            return _decode(items, num_frames, height, width, task.get("id"), "draft masks")
    return None


def predicted_tracks(
    task: Mapping[str, Any], schema: Schema, obj: ObjectSpec, model_version: str, clock: VideoClock, width: int,
    height: int,
) -> list[dict[int, Box]]:  # fmt: skip
    """The object's track in each stored prediction of ours, newest first (video layout)."""
    tracks = []
    for stored in our_predictions(task, model_version):
        items = object_items(stored.get("result"), schema, obj)
        if not items:
            continue
        try:
            tracks.append(track_boxes(items[0], clock, width, height))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("task %s: stored track unusable (%s)", task.get("id"), exc)
    return tracks


def _decode(
    items: list, num_frames: int, height: int, width: int, task_id: Any, what: str
) -> FrameMasks | None:
    if not items:
        return None
    try:
        return masks_from_brush_items(items, num_frames, height, width)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("task %s: %s unusable (%s)", task_id, what, exc)
        return None
