"""The only place that knows the order of DecAF's stages: video → MLLM attention → fusion → points → SAM2."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .confidence import ConfidenceRecorder, summary_score
from .config import DEFAULT_MLLM, DEFAULT_SAM2, DecafConfig
from .errors import PromptError, PromptOutOfRangeError, VideoError
from .fusion import coarse_masks, fuse_maps
from .points import candidate_points
from .tracking import VideoPredictor, segment_with_points, track_both_ways
from .types import Box, Click, FrameMasks, VideoInfo, VideoSegmentation
from .video import VideoReader, key_frame_indices, open_video

CORRECTION_OBJECT_ID = 1

Progress = Callable[[str, float], None]


def normalize_prompt(prompt: str | None) -> str:
    """Strip the prompt and refuse an empty one (the MLLM adapter adds the reference's final '.')."""
    text = (prompt or "").strip()
    if not text:
        raise PromptError("the text prompt is empty: describe the object to segment")
    return text


def check_video(reader: VideoReader) -> VideoInfo:
    """The video facts, refusing clips DecAF cannot work on (before any model runs)."""
    info = reader.info
    if info.num_frames < 2:
        raise VideoError(
            f"{info.source or 'the video'} has {info.num_frames} frame(s): DecAF needs at least 2 frames"
        )
    return info


@dataclass
class CorrectionSession:
    """A live SAM2 state over the whole video, seeded with DecAF's prompt masks, that takes annotator clicks.

    One SAM2 object stands for the segmented object. Its first conditioning inputs are DecAF's selected
    prompt masks; clicks on a frame SAM2 has already tracked refine that frame's mask (SAM2 feeds the
    previous mask logits to the decoder with the new points), then the whole video is propagated again.
    Clicks are remembered, so a session rebuilt after eviction replays them and gives the same masks.
    """

    predictor: VideoPredictor
    frames: Any  # lazy frame sequence of the whole video
    prompt_masks: dict[int, np.ndarray]
    clicks: list[Click] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    _state: Any = None
    _applied: int = 0  # number of (clicks + boxes) rounds already inside _state
    _rounds: list[tuple[list[Click], list[Box]]] = field(default_factory=list)
    _masks: FrameMasks | None = None  # the masks after the last propagation
    confidence: list[float] | None = None  # per frame, from SAM2's signals in the last propagation

    def add(self, clicks: Sequence[Click], boxes: Sequence[Box]) -> bool:
        """Remember new prompts; clicks already known (same frame, place and sign) are ignored.

        Label Studio resends every pending click of a label with each new one, so duplicates are normal.
        Returns True when something new was added.
        """
        known = {(c.frame, round(c.x, 3), round(c.y, 3), c.positive) for c in self.clicks}
        new_clicks = [c for c in clicks if (c.frame, round(c.x, 3), round(c.y, 3), c.positive) not in known]
        new_boxes = [b for b in boxes if b not in self.boxes]
        if not new_clicks and not new_boxes:
            return False
        self.clicks.extend(new_clicks)
        self.boxes.extend(new_boxes)
        self._rounds.append((new_clicks, new_boxes))
        return True

    def propagate(self) -> FrameMasks:
        """Bring the SAM2 state up to date with every remembered prompt and return masks for all frames."""
        predictor = self.predictor
        if self._masks is not None and self._applied == len(self._rounds):
            return self._masks  # nothing new: propagating again would only cost time
        if self._state is None:
            self._state = predictor.init_state(self.frames)
            self._applied = 0
            predictor.reset_state(self._state)
            for frame_idx, mask in sorted(self.prompt_masks.items()):
                predictor.add_new_mask(self._state, frame_idx, CORRECTION_OBJECT_ID, mask)
            if self._rounds and self.prompt_masks:
                # clicks refine a tracked mask: SAM2 needs the propagated masks as their prior
                self._collect()
        for clicks, boxes in self._rounds[self._applied :]:
            self._apply_round(clicks, boxes)
        self._applied = len(self._rounds)
        self._masks = self._collect()
        return self._masks

    def _apply_round(self, clicks: Sequence[Click], boxes: Sequence[Box]) -> None:
        frames = sorted({c.frame for c in clicks} | {b.frame for b in boxes})
        for frame_idx in frames:
            pts = [(c.x, c.y) for c in clicks if c.frame == frame_idx]
            labels = [1 if c.positive else 0 for c in clicks if c.frame == frame_idx]
            frame_boxes = [b for b in boxes if b.frame == frame_idx]
            box = None
            if frame_boxes:
                b = frame_boxes[-1]  # SAM2 takes one box per object and frame: the latest wins
                box = np.array([b.x0, b.y0, b.x1, b.y1], dtype=np.float32)
            self.predictor.add_new_points_or_box(
                self._state,
                frame_idx,
                CORRECTION_OBJECT_ID,
                points=np.array(pts, dtype=np.float32).reshape(-1, 2) if pts else None,
                labels=np.array(labels, dtype=np.int32) if pts else None,
                box=box,
                normalize_coords=True,
            )

    def _collect(self) -> FrameMasks:
        n = len(self.frames)
        first = self.frames[0]
        out = FrameMasks(n, first.shape[0], first.shape[1])
        cond_frames = sorted(
            set(self.prompt_masks) | {c.frame for c in self.clicks} | {b.frame for b in self.boxes}
        )
        if not cond_frames:
            return out
        recorder = ConfidenceRecorder(self.predictor, n)

        def sink(f: int, obj_ids: list[int], binary: np.ndarray) -> None:
            out[f] = binary.any(axis=0)
            recorder.record(self._state, f, obj_ids, binary)

        track_both_ways(self.predictor, self._state, cond_frames[0], n, sink)
        self.confidence = recorder.result()
        return out


class DecafPipeline:
    """DecAF end to end on one (video, prompt): masks on every frame, and corrections by clicks."""

    def __init__(
        self,
        mllm: Any,
        predictor: VideoPredictor,
        config: DecafConfig | None = None,
        random_weights: bool = False,
    ) -> None:
        self.mllm = mllm
        self.predictor = predictor
        self.config = config or DecafConfig()
        self.random_weights = random_weights

    @classmethod
    def from_pretrained(
        cls,
        mllm: str | None = None,
        sam2: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        config: DecafConfig | None = None,
    ) -> DecafPipeline:
        """Load both models: hub ids or local folders, falling back to DECAF_MLLM / DECAF_SAM2, then the defaults."""
        from .mllm import load_mllm
        from .sam2.loading import load_sam2_predictor

        config = config or DecafConfig.from_env()
        mllm_name = mllm or os.environ.get("DECAF_MLLM") or DEFAULT_MLLM
        sam2_name = sam2 or os.environ.get("DECAF_SAM2") or DEFAULT_SAM2
        adapter = load_mllm(mllm_name, device=device, dtype=dtype, config=config)
        predictor = load_sam2_predictor(sam2_name, device=device, dtype=dtype)
        random_weights = bool(
            getattr(adapter, "random_weights", False) or getattr(predictor, "random_weights", False)
        )
        return cls(adapter, predictor, config, random_weights=random_weights)

    def segment(
        self, video: str | Path | VideoReader, prompt: str, progress: Progress | None = None
    ) -> VideoSegmentation:
        prompt = normalize_prompt(prompt)
        timings: dict[str, float] = {}
        report = progress or (lambda stage, fraction: None)
        owned = not isinstance(video, VideoReader)
        with _timed(timings, "video"):  # _timed adds up: opening and key-frame reading are one stage
            reader = open_video(video) if owned else video
        try:
            return self._segment(reader, prompt, report, timings)
        except BaseException:
            if owned:  # the session would have kept it; on failure nothing does: release the container now
                reader.close()
            raise

    def _segment(
        self, reader: VideoReader, prompt: str, report: Progress, timings: dict[str, float]
    ) -> VideoSegmentation:
        cfg = self.config
        with _timed(timings, "video"):
            info = check_video(reader)
            key_indices = key_frame_indices(info.num_frames, cfg.num_key_frames)
            key_frames = reader.read_frames(key_indices)
        report("video", 0.05)

        with _timed(timings, "mllm_object"):
            obj_video, obj_frames = self.mllm.object_class(key_frames, prompt)
            candidates = list(obj_video.answers or []) + list(obj_frames.answers or [])
            object_name = self.mllm.choose_object(prompt, candidates)
        report("mllm_object", 0.35)
        with _timed(timings, "mllm_background"):
            bg_video, bg_frames = self.mllm.background(key_frames, object_name, prompt)
        report("mllm_background", 0.55)

        with _timed(timings, "fusion"):
            fusion = fuse_maps(
                obj_video.attention_map,
                bg_video.attention_map,
                obj_frames.attention_map,
                bg_frames.attention_map,
                cfg,
            )
            _, _, coarse = coarse_masks(fusion.fused, (info.height, info.width))
            points = candidate_points(fusion.fused, cfg.point_threshold)
        report("fusion", 0.6)

        with _timed(timings, "sam2"):
            tracking = segment_with_points(
                self.predictor, key_frames, reader, key_indices, fusion.fused, points, cfg
            )
        report("sam2", 1.0)

        point_list = _points_in_pixels(points, key_indices, info.width, info.height)
        prompt_masks = _merge_prompt_masks(tracking.selected_video_frame_indices, tracking.selected_masks)
        final_scores = [float(s) for s in np.asarray(tracking.final_scores).ravel()]
        scores = {
            # Label Studio shows the score as a percentage; AC can make a final score negative
            "score": min(1.0, max(0.0, max(final_scores))) if final_scores else 0.0,
            "final_scores": final_scores,
            "ac_scores": [float(s) for s in np.asarray(tracking.ac_scores).ravel()],
            "tracklet_scores": [float(s) for s in np.asarray(tracking.tracklet_scores).ravel()],
            "object_answers": candidates,
            "confidence": summary_score(tracking.frame_confidence),
        }
        session = CorrectionSession(self.predictor, reader, prompt_masks)
        return VideoSegmentation(
            prompt=prompt,
            object_name=object_name,
            video=info,
            key_frame_indices=[int(i) for i in key_indices],
            masks=tracking.final_masks,
            coarse_masks=coarse,
            points=point_list,
            prompt_frames=sorted(prompt_masks),
            scores=scores,
            timings=timings,
            random_weights=self.random_weights,
            frame_confidence=tracking.frame_confidence,
            session=session,
        )

    def refine(
        self,
        seg: VideoSegmentation,
        clicks: Sequence[Click] = (),
        boxes: Sequence[Box] = (),
        video: Any = None,
    ) -> VideoSegmentation:
        """Add annotator clicks/boxes to the object's SAM2 session and re-propagate over the whole video.

        The MLLM never runs here. `video` is only needed when `seg.session` is gone (restart, eviction):
        the session is then rebuilt from the segmentation's prompt frames and masks.
        """
        info = seg.video
        for c in clicks:
            _check_in_frame(c.frame, c.x, c.y, info.num_frames, info.width, info.height)
        for b in boxes:
            _check_in_frame(b.frame, b.x0, b.y0, info.num_frames, info.width, info.height)
            _check_in_frame(b.frame, b.x1, b.y1, info.num_frames, info.width, info.height)
            if b.x1 <= b.x0 or b.y1 <= b.y0:
                raise PromptOutOfRangeError(f"box on frame {b.frame} has no area: {b}")
        session = seg.session
        if session is None:
            session = self.rebuild_session(seg, video)
        with _timed(timings := dict(seg.timings), "refine"):
            session.add(clicks, boxes)
            masks = session.propagate()
        return replace(
            seg, masks=masks, session=session, timings=timings, frame_confidence=session.confidence
        )

    def rebuild_session(self, seg: VideoSegmentation, video: Any) -> CorrectionSession:
        """A fresh correction session from a finished segmentation (its masks on the prompt frames)."""
        if video is None:
            raise VideoError("the correction session is gone and no video was given to rebuild it")
        reader = video if isinstance(video, VideoReader) else open_video(video)
        frames = seg.prompt_frames or _largest_mask_frame(seg.masks)
        return CorrectionSession(self.predictor, reader, {f: seg.masks[f] for f in frames})


def _check_in_frame(frame: int, x: float, y: float, n: int, width: int, height: int) -> None:
    if not 0 <= frame < n:
        raise PromptOutOfRangeError(f"frame {frame} is outside the video (0..{n - 1})")
    if not (0 <= x <= width and 0 <= y <= height):
        raise PromptOutOfRangeError(
            f"point ({x:.1f}, {y:.1f}) on frame {frame} is outside the {width}x{height} frame"
        )


def _largest_mask_frame(masks: FrameMasks) -> list[int]:
    areas = [int(m.sum()) for m in masks]
    return [int(np.argmax(areas))] if areas and max(areas) > 0 else []


def _merge_prompt_masks(frames: Sequence[int], masks: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    merged: dict[int, np.ndarray] = {}
    for f, m in zip(frames, masks):
        m = np.asarray(m) > 0
        merged[int(f)] = merged[int(f)] | m if int(f) in merged else m
    return merged


def _points_in_pixels(
    points: Sequence[Any], key_indices: Sequence[int], width: int, height: int
) -> list[dict]:
    out = []
    for t, fp in enumerate(points):
        if fp is None:
            continue
        for (x, y), value in zip(np.asarray(fp.points_xy), np.asarray(fp.values)):
            out.append(
                {
                    "frame": int(key_indices[t]),
                    "x": float(x) * width,
                    "y": float(y) * height,
                    "value": float(value),
                }
            )
    return out


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
