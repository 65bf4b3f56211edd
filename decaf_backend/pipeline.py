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
from .types import Box, Click, FrameMasks, PromptsByKind, VideoInfo, VideoSegmentation
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


Prompt = Click | Box


@dataclass
class CorrectionSession(PromptsByKind):
    """A live SAM2 state over the whole video, seeded with the starting masks, that takes annotator prompts.

    One SAM2 object stands for the segmented object. Its first conditioning inputs are the starting
    segmentation's masks on its prompt frames (`starting_masks`), so a session rebuilt from a stored
    segmentation equals the live one. Prompts (clicks, boxes) are applied one per round, each followed by a
    propagation over the whole video: the state after k prompts depends only on the starting masks and those
    k prompts, so continuing a session with one more prompt gives exactly what a fresh session given all of
    them gives, at the cost of one propagation.
    """

    predictor: VideoPredictor
    frames: Any  # lazy frame sequence of the whole video
    prompt_masks: dict[int, np.ndarray]
    prompts: list[Prompt] = field(default_factory=list)  # applied, in order
    _state: Any = None
    _masks: FrameMasks | None = None  # the masks after the last propagation
    confidence: list[float] | None = None  # per frame, from SAM2's signals in the last propagation

    def continues(self, prompts: Sequence[Prompt]) -> bool:
        """True when `prompts` start with every prompt this session has applied (so it can go on from here)."""
        return list(prompts[: len(self.prompts)]) == self.prompts

    def extend(self, prompts: Sequence[Prompt]) -> FrameMasks:
        """Apply `prompts` after the ones already in the state, one round and one propagation each."""
        try:
            if self._state is None:
                self._start()
            for prompt in prompts:
                self._apply(prompt)
                self._masks = self._collect(prompt.frame)
                self.prompts.append(prompt)  # recorded only once propagated
            if self._masks is None:
                self._masks = self._collect()
        except BaseException:
            # a prompt may sit half-applied in the state: start over on the next use, record nothing
            self._state, self._masks, self.prompts = None, None, []
            raise
        return self._masks

    @property
    def masks(self) -> FrameMasks:
        """The masks after every applied prompt (the propagated starting masks when none)."""
        return self.extend(())

    def _start(self) -> None:
        predictor = self.predictor
        self._state = predictor.init_state(self.frames)
        predictor.reset_state(self._state)
        self.prompts = []
        for frame_idx, mask in sorted(self.prompt_masks.items()):
            predictor.add_new_mask(self._state, frame_idx, CORRECTION_OBJECT_ID, mask)
        if self.prompt_masks:
            # prompts refine a tracked mask: SAM2 needs the propagated masks as their prior
            self._masks = self._collect()

    def _apply(self, prompt: Prompt) -> None:
        if isinstance(prompt, Click):
            points = np.array([[prompt.x, prompt.y]], dtype=np.float32)
            labels = np.array([1 if prompt.positive else 0], dtype=np.int32)
            box = None
        else:
            points = labels = None
            box = np.array([prompt.x0, prompt.y0, prompt.x1, prompt.y1], dtype=np.float32)
        self.predictor.add_new_points_or_box(
            self._state,
            prompt.frame,
            CORRECTION_OBJECT_ID,
            points=points,
            labels=labels,
            box=box,
            normalize_coords=True,
        )

    def _collect(self, applying: int | None = None) -> FrameMasks:
        """Propagate over the whole video (`applying`: the frame of a prompt being applied, not yet recorded)."""
        n = len(self.frames)
        first = self.frames[0]
        out = FrameMasks(n, first.shape[0], first.shape[1])
        frames = set(self.prompt_masks) | {p.frame for p in self.prompts}
        cond_frames = sorted(frames if applying is None else frames | {applying})
        if not cond_frames:
            return out
        recorder = ConfidenceRecorder(self.predictor, n)

        def sink(f: int, obj_ids: list[int], binary: np.ndarray) -> None:
            out[f] = binary.any(axis=0)
            recorder.record(self._state, f, obj_ids, binary)

        track_both_ways(self.predictor, self._state, cond_frames[0], n, sink)
        self.confidence = recorder.result()
        return out


def starting_masks(seg: VideoSegmentation) -> dict[int, np.ndarray]:
    """The masks a correction session is conditioned on: the segmentation's own masks on its prompt frames
    (its largest mask's frame when it has none). Read from the finished masks, so the stored segmentation
    alone rebuilds the same session after a restart."""
    frames = seg.prompt_frames or _largest_mask_frame(seg.masks)
    return {int(f): seg.masks[f] for f in frames}


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
        seg = VideoSegmentation(
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
        )
        seg.session = CorrectionSession(self.predictor, reader, starting_masks(seg))
        return seg

    def correct(
        self,
        seg: VideoSegmentation,
        prompts: Sequence[Prompt],
        session: CorrectionSession | None = None,
        video: Any = None,
    ) -> VideoSegmentation:
        """The masks of `seg`'s starting state corrected by exactly `prompts` (clicks/boxes, in order).

        The MLLM never runs here. `session` (default `seg.session`) is continued when its applied prompts are a
        prefix of `prompts` (one more click costs one propagation); otherwise a fresh session starts from the
        segmentation's starting masks, which needs `video` when `seg` has no live session. No prompts: `seg`.
        """
        prompts = list(prompts)
        self.check_prompts(seg, prompts)
        if not prompts:
            return seg
        session = session if session is not None else seg.session
        if not isinstance(session, CorrectionSession) or not session.continues(prompts):
            session = self.start_session(seg, video)
        with _timed(timings := dict(seg.timings), "refine"):
            masks = session.extend(prompts[len(session.prompts) :])
        return replace(
            seg, masks=masks, session=session, timings=timings, frame_confidence=session.confidence
        )

    def refine(
        self,
        seg: VideoSegmentation,
        clicks: Sequence[Click] = (),
        boxes: Sequence[Box] = (),
        video: Any = None,
    ) -> VideoSegmentation:
        """Add clicks/boxes after those `seg`'s session already holds (known ones are not added twice)."""
        applied = list(seg.session.prompts) if isinstance(seg.session, CorrectionSession) else []
        new = [p for p in [*clicks, *boxes] if p not in applied]
        return self.correct(seg, [*applied, *new], video=video)

    def check_prompts(self, seg: VideoSegmentation, prompts: Sequence[Prompt]) -> None:
        info = seg.video
        for p in prompts:
            if isinstance(p, Click):
                _check_in_frame(p.frame, p.x, p.y, info.num_frames, info.width, info.height)
                continue
            _check_in_frame(p.frame, p.x0, p.y0, info.num_frames, info.width, info.height)
            _check_in_frame(p.frame, p.x1, p.y1, info.num_frames, info.width, info.height)
            if p.x1 <= p.x0 or p.y1 <= p.y0:
                raise PromptOutOfRangeError(f"box on frame {p.frame} has no area: {p}")

    def start_session(self, seg: VideoSegmentation, video: Any = None) -> CorrectionSession:
        """A session in the segmentation's starting state: its live one if no prompt was applied to it yet,
        else a fresh one over `video` (or the live session's frames) conditioned on the same starting masks."""
        live = seg.session if isinstance(seg.session, CorrectionSession) else None
        if live is not None and not live.prompts:
            return live
        if video is None and live is not None:
            video = live.frames
        if video is None:
            raise VideoError("the correction session is gone and no video was given to rebuild it")
        reader = open_video(video) if isinstance(video, (str, Path)) else video
        # a corrected segmentation's own masks are not its starting state: its live session knows the starting
        # masks; without one (after a restart) `seg` is the stored starting segmentation
        start = live.prompt_masks if live is not None else starting_masks(seg)
        return CorrectionSession(self.predictor, reader, start)


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
