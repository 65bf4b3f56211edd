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

from ..confidence import summary_score
from ..export import brush_result, brush_result_mask
from ..review import FrameToCheck, MaskGeometry, frames_to_check
from ..types import Box, FrameMasks, VideoSegmentation
from .schema import ObjectSpec, Schema

REVIEW_REGION_ID = "decaf-review"
FRAMES_TO_CHECK = 5
NAME_CHARS = 60  # the MLLM's short answer, cut where it is not short (random test weights ramble)


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


# ------------------------------------------------------------------------------------ what the model thought
#
# Seen in Label Studio 1.23.2 (README, "What the model thought"): a region's `score` shows next to it in the Regions list, its
# `meta.text` in the region's Info panel once selected, and a read-only <TextArea> result above the media in the
# labeling view; Data Manager sorts and filters tasks by the prediction's `score`.


@dataclass(frozen=True)
class ObjectReview:
    """One object's per-frame confidence, its summary and the frames to check first."""

    confidence: list[float] | None
    summary: float | None
    checks: list[FrameToCheck]

    @classmethod
    def of(cls, seg: VideoSegmentation) -> ObjectReview:
        conf = seg.frame_confidence
        if conf is not None and len(conf) != seg.masks.num_frames:
            conf = None  # masks and signals from different runs: show no number rather than a wrong one
        checks = frames_to_check(MaskGeometry.of(seg.masks), conf, limit=FRAMES_TO_CHECK)
        return cls(conf, summary_score(conf), checks)

    def score(self, seg: VideoSegmentation) -> float:
        """The object's share of the prediction score: the confidence summary, else DecAF's selection score."""
        return self.summary if self.summary is not None else min(1.0, max(0.0, seg.score))


def _clock(schema: Schema, seg: VideoSegmentation) -> VideoClock | None:
    """The player's clock of a video task (None for frame sequences, whose pages are the frames)."""
    info = seg.video
    return VideoClock(info.fps, schema.framerate, info.num_frames) if schema.layout == "video" else None


def _place(clock: VideoClock | None, frame: int) -> str:
    """How the annotator finds a frame: the pager's page (frames) or the player's 1-based frame (video)."""
    return f"page {frame + 1}" if clock is None else f"frame {clock.to_ls(frame)}"


def _check_text(check: FrameToCheck, clock: VideoClock | None) -> str:
    reasons = ", ".join(check.reasons) or f"risk {check.risk:.2f}"
    return f"{_place(clock, check.frame)} ({reasons})"


def _chosen_text(seg: VideoSegmentation) -> str:
    if not seg.prompt:
        return f"Object '{seg.object_name}' from clicks (no prompt)"
    weights = " [random test weights]" if seg.random_weights else ""
    name = seg.object_name if len(seg.object_name) <= NAME_CHARS else seg.object_name[: NAME_CHARS - 1] + "…"
    return f"MLLM chose '{name}' for the prompt '{seg.prompt}'{weights}"


def object_items(
    seg: VideoSegmentation,
    obj: ObjectSpec,
    schema: Schema,
    review: ObjectReview,
    clock: VideoClock | None = None,
    skip_empty: bool = False,
) -> list[dict[str, Any]]:
    """The object's regions with what the model thought: per-frame confidence as each brush region's `score` and
    in its `meta.text` (with the chosen object and prompt, and why the frame is worth a check); a track gets the
    summary as its `score`, the frames to check as its text, and each keyframe its frame's confidence."""
    checks = {c.frame: (rank, c) for rank, c in enumerate(review.checks, 1)}
    chosen = _chosen_text(seg)
    if schema.layout == "frames":
        items = brush_items(seg.masks, obj, schema, skip_empty=skip_empty)
        for item in items:
            f = int(item["item_index"])
            line = _place(None, f)
            if review.confidence is not None:
                item["score"] = round(float(review.confidence[f]), 4)
                line += f": confidence {review.confidence[f]:.2f}"
            if f in checks:
                rank, check = checks[f]
                line += f" · check #{rank}: {', '.join(check.reasons) or 'doubtful'}"
            item["meta"] = {"text": f"{line}\n{chosen}"}
        return items
    if clock is None:
        raise ValueError("a video track needs the video clock")
    item = track_item(seg.masks, obj, schema, clock)
    if item is None:
        return []
    lines = [chosen]
    if review.confidence is not None:
        by_ls_frame: dict[int, float] = {}
        for f, c in enumerate(review.confidence):  # several decoded frames per LS frame: the weakest counts
            ls = clock.to_ls(f)
            by_ls_frame[ls] = min(c, by_ls_frame.get(ls, 1.0))
        for key in item["value"]["sequence"]:
            if key["frame"] in by_ls_frame:
                key["score"] = round(by_ls_frame[key["frame"]], 4)
        item["score"] = round(float(review.summary), 4)
        lines.append(f"confidence {review.summary:.2f} (10th percentile over frames)")
    if review.checks:
        lines.append("check first: " + "; ".join(_check_text(c, clock) for c in review.checks))
    item["meta"] = {"text": "\n".join(lines)}
    return [item]


def review_item(
    pairs: Sequence[tuple[ObjectSpec, VideoSegmentation, ObjectReview]],
    schema: Schema,
    clock: VideoClock | None = None,
) -> dict[str, Any] | None:
    """The review <TextArea>'s text (None when the config has none): per object, what the MLLM chose for which
    prompt, the confidence summary with its weakest frame, and the frames to check first, in order."""
    if schema.review_name is None or not pairs:
        return None
    lines = []
    for obj, seg, review in pairs:
        name = f"{obj.label}: " if obj.label and len(pairs) > 1 else ""
        lines.append(f"{name}{_chosen_text(seg)}")
        if review.confidence is not None and review.summary is not None:
            weakest = int(np.argmin(review.confidence))
            lines.append(
                f"{name}Confidence {review.summary:.2f} (lowest {review.confidence[weakest]:.2f} on "
                f"{_place(clock, weakest)})"
            )
        if review.checks:
            checks = "; ".join(_check_text(c, clock) for c in review.checks)
            lines.append(f"{name}Check first: {checks}")
        else:
            lines.append(f"{name}Check first: nothing stands out")
    return {
        "id": REVIEW_REGION_ID,
        "from_name": schema.review_name,
        "to_name": schema.object_name,
        "type": "textarea",
        "value": {"text": lines},
    }


def segmentation_prediction(
    pairs: Sequence[tuple[ObjectSpec, VideoSegmentation]],
    schema: Schema,
    model_version: str,
    skip_empty: bool = False,
    unchanged: Sequence[tuple[ObjectSpec, VideoSegmentation]] = (),
) -> dict[str, Any]:
    """A task's prediction from its objects' segmentations: the regions, the review text and the score.

    The score is the lowest object score: a video is as doubtful as its most doubtful object, so Label Studio's
    ordering by prediction score puts it first. `unchanged` objects (a correction of another object) appear in
    the review text only: it replaces the whole text in the labeling view.
    """
    reviewed = [(obj, seg, ObjectReview.of(seg)) for obj, seg in pairs]
    others = [(obj, seg, ObjectReview.of(seg)) for obj, seg in unchanged]
    results: list[dict[str, Any]] = []
    for obj, seg, review in reviewed:
        results.extend(object_items(seg, obj, schema, review, _clock(schema, seg), skip_empty))
    everything = reviewed + others
    text = review_item(everything, schema, _clock(schema, everything[0][1]) if everything else None)
    if text is not None:
        results.append(text)
    score = min((review.score(seg) for _, seg, review in reviewed), default=0.0)
    return prediction(results, score, model_version)
