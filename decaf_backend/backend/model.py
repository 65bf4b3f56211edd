"""The Label Studio model class, in the 2.x ML backend's shape: `setup()`, `predict(tasks, context)`, `fit(event, data)`.

- Pre-annotation (`context` empty): each task is a background job (jobs.py); the reply holds the finished ones.
- Correction (`context` with clicks/boxes): the clicks/boxes go into the object's SAM2 session (no MLLM pass), the
  whole video is propagated again and every frame's mask comes back.
- Webhook (`fit`): a submitted annotation with a new TextArea prompt, or (video tracks, which the browser never
  sends interactively) with moved/drawn boxes, becomes a background job whose prediction is posted to the API.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import Any

from ..errors import PromptError
from ..types import Box, FrameMasks, VideoSegmentation
from .context import Frame, ObjectPrompts, is_interactive, parse_prompts
from .errors import LabelConfigError, RequestError
from .jobs import DONE, FAILED, Job
from .media import Media, media_key
from .results import (
    VideoClock,
    mask_bbox,
    masks_from_brush_items,
    prediction,
    region_id,
    segmentation_prediction,
    track_boxes,
)
from .runtime import Runtime, get_runtime
from .schema import ObjectSpec, Schema, parse_schema

log = logging.getLogger(__name__)


def project_id_of(project: Any) -> int | None:
    """Label Studio sends the project as "<id>.<created_at epoch>"."""
    if isinstance(project, int):
        return project
    if isinstance(project, str) and project.split(".")[0].isdigit():
        return int(project.split(".")[0])
    return None


class DecafVideoModel:
    """One instance per request; models, sessions and jobs live in the process-wide Runtime."""

    def __init__(
        self, project_id: Any = None, label_config: str | None = None, runtime: Runtime | None = None
    ):
        self.project_id = project_id_of(project_id)
        self.label_config = label_config
        self.runtime = runtime or get_runtime()
        self.settings = self.runtime.settings
        self.schema: Schema | None = None
        self.setup()

    def setup(self) -> None:
        """Cheap (Label Studio calls /setup before every predict, 3 s timeout): parse the config, no model work."""
        if self.label_config:
            self.schema = parse_schema(self.label_config)

    @property
    def model_version(self) -> str:
        return self.settings.model_version

    def _schema(self) -> Schema:
        if self.schema is None:
            raise LabelConfigError("the request carries no labeling config")
        return self.schema

    # predict -------------------------------------------------------------------------------------------------
    def predict(self, tasks: Sequence[Any], context: Any = None, **kwargs: Any) -> list[Any]:
        """Per task, in order: a prediction dict, or [] when it is still being computed (posted later)."""
        self._schema()
        if is_interactive(context):
            if len(tasks) != 1 or not isinstance(tasks[0], Mapping):
                raise RequestError(f"a correction request must carry exactly one task, not {len(tasks)}")
            return [self.correct(tasks[0], context)]
        return self.prefill(tasks)

    def prefill(self, tasks: Sequence[Any]) -> list[Any]:
        out: list[Any] = [None] * len(tasks)
        pending: list[tuple[int, Job]] = []
        for i, task in enumerate(tasks):
            if not isinstance(task, Mapping) or "id" not in task:
                raise RequestError("every task must be an object with an 'id'")
            out[i] = self.cached_prediction(task)
            if out[i] is None:
                key = ("task", self.project_id, task["id"], _digest(task.get("data"), self.label_config))
                run = partial(self.predict_task, task)
                pending.append((i, self.runtime.jobs.submit(key, task["id"], run, self.project_id)))
        wait = self.settings.open_wait_s if len(tasks) == 1 else self.settings.batch_wait_s
        if self.runtime.credentials(self.project_id) is None:
            # nothing could be posted later: wait as long as Label Studio does
            wait = max(wait, self.settings.interactive_wait_s)
        self.runtime.jobs.wait([job for _, job in pending], wait)
        for i, job in pending:
            out[i] = self._reply_for(job)
        return out

    def _reply_for(self, job: Job) -> Any:
        settled = self.runtime.jobs.settle(job)
        if settled.state == DONE:
            return settled.prediction
        if settled.state == FAILED:
            log.warning("task %s: empty prediction because %s", job.task_id, settled.error)
            self.runtime.metrics.inc("task_failures_total")
            return prediction([], 0.0, self.model_version)
        log.info("task %s: still computing; its prediction will be posted to Label Studio", job.task_id)
        self.runtime.metrics.inc("predictions_deferred_total")
        return []

    def predict_task(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """The full pre-annotation of one task (every object, every frame); runs in the job worker."""
        media = self._media(task)
        objects = self._schema().objects(task, None, self.settings.prompt_field)
        segs = [self.segmentation(task, media, obj) for obj in objects]
        self.runtime.metrics.inc("tasks_predicted_total")
        return self._assemble(objects, segs)

    def cached_prediction(self, task: Mapping[str, Any]) -> dict[str, Any] | None:
        """The task's prediction when every object is already segmented (cache or disk); no download, no model."""
        try:
            objects = self._schema().objects(task, None, self.settings.prompt_field)
        except PromptError:
            return None
        segs = [self._known(self._seg_key(task, obj)) for obj in objects]
        if any(seg is None for seg in segs):
            return None
        return self._assemble(objects, segs)

    def _assemble(
        self,
        objects: Sequence[ObjectSpec],
        segs: Sequence[VideoSegmentation],
        unchanged: Sequence[tuple[ObjectSpec, VideoSegmentation]] = (),
    ) -> dict[str, Any]:
        """The prediction of these objects; `unchanged` objects only keep their lines in the review text."""
        pairs = list(zip(objects, segs))
        skip = self.settings.skip_empty_masks
        return segmentation_prediction(pairs, self._schema(), self.model_version, skip, unchanged)

    def segmentation(self, task: Mapping[str, Any], media: Media, obj: ObjectSpec) -> VideoSegmentation:
        """The object's DecAF segmentation: from the cache, the disk store, or one MLLM + SAM2 run."""
        key = self._seg_key(task, obj)
        seg = self._known(key)
        if seg is not None:
            return seg
        with self.runtime.model_lock:
            seg = self.runtime.cache.get(key)
            if seg is None:
                self.runtime.metrics.inc("segment_runs_total")
                seg = self.runtime.pipeline().segment(media.reader, obj.prompt)
                self._keep(key, seg)
        return seg

    # corrections ---------------------------------------------------------------------------------------------
    def correct(self, task: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """An interactive correction: the re-propagated objects, or an empty prediction when nothing is new."""
        running = self.runtime.jobs.active_for_task(task.get("id"))
        if running:  # the task's pre-annotation is being computed: correct that, not an empty start
            self.runtime.jobs.wait(running, self.settings.interactive_wait_s)
        fixed = self.apply_corrections(task, context)
        if fixed is None:
            log.info("task %s: the context holds no new click or box; nothing to correct", task.get("id"))
            return prediction([], 0.0, self.model_version)
        return fixed

    def apply_corrections(
        self, task: Mapping[str, Any], context: Mapping[str, Any], applied: Hashable | None = None
    ) -> dict[str, Any] | None:
        """Feed the context's new clicks/boxes to each object's SAM2 session (no MLLM pass) and return the
        corrected objects as a prediction; None when the context holds nothing new. With `applied` (a key for
        the source, e.g. an annotation), prompts identical to the last ones applied for that key are not new:
        a resubmitted annotation keeps its moved box, which never equals the SAM2 track it led to."""
        schema = self._schema()
        media = self._media(task)
        info = media.info
        frame = Frame(info.num_frames, info.width, info.height)
        clock = VideoClock(info.fps, schema.framerate, info.num_frames) if schema.layout == "video" else None
        try:
            objects = schema.objects(task, context, self.settings.prompt_field)
        except PromptError:  # no prompt yet: clicks alone still drive SAM2
            objects = [ObjectSpec(label, "") for label in schema.labels] or [ObjectSpec(None, "")]
        groups = self._new_prompts(task, media, objects, context, frame, clock)
        if not groups:
            return None
        signature = tuple((obj, tuple(g.clicks), tuple(g.boxes)) for g, obj in groups)
        if applied is not None and not self.runtime.first_application(applied, signature):
            return None
        fixed: list[tuple[ObjectSpec, VideoSegmentation]] = []
        for group, obj in groups:
            with self.runtime.model_lock:
                # looked up under the lock: a concurrent correction of this object may just have replaced
                # the cached segmentation (and its session) with one holding its clicks
                seg, seeds = self._session_start(task, media, obj)
                self.runtime.metrics.inc("refine_runs_total")
                seg = self.runtime.pipeline().refine(
                    seg, group.clicks, [*seeds, *group.boxes], video=media.reader
                )
                self._keep(self._seg_key(task, obj), seg)
            fixed.append((obj, seg))
        done = {obj for obj, _ in fixed}
        others = [(o, self._known(self._seg_key(task, o))) for o in objects if o not in done]
        unchanged = [(o, seg) for o, seg in others if seg is not None]
        return self._assemble([obj for obj, _ in fixed], [seg for _, seg in fixed], unchanged)

    def _new_prompts(
        self,
        task: Mapping[str, Any],
        media: Media,
        objects: list[ObjectSpec],
        context: Mapping[str, Any],
        frame: Frame,
        clock: VideoClock | None,
    ) -> list[tuple[ObjectPrompts, ObjectSpec]]:
        """The context's prompts per object, keeping only video keyframes that differ from what we showed."""
        schema = self._schema()
        shown: dict[ObjectSpec, tuple[VideoSegmentation | None, list[dict[int, Box]]]] = {}

        def reference(obj: ObjectSpec) -> tuple[VideoSegmentation | None, list[dict[int, Box]]]:
            """What the annotator saw of an object: our masks, else the stored prediction's masks; plus every
            track of ours stored for the task (an annotation may still hold an earlier one)."""
            if obj not in shown:
                seg = self._known(self._seg_key(task, obj))
                if seg is None and schema.layout == "frames":
                    seg = self._stored_masks(task, media, obj)
                shown[obj] = (seg, self._predicted_tracks(task, media, obj))
            return shown[obj]

        def known_box(label: str | None, index: int) -> list[Box]:
            seg, tracks = reference(next((o for o in objects if o.label == label), objects[0]))
            boxes = [track[index] for track in tracks if index in track]
            box = mask_bbox(seg.masks[index]) if seg is not None else None
            return boxes if box is None else [Box(index, *box), *boxes]

        groups = parse_prompts(context, schema, frame, clock, known_box)
        return [(g, self._pick_object(g, objects, lambda o: reference(o)[0])) for g in groups]

    @staticmethod
    def _pick_object(
        group: ObjectPrompts,
        objects: list[ObjectSpec],
        current: Callable[[ObjectSpec], VideoSegmentation | None],
    ) -> ObjectSpec:
        """A labelled prompt goes to its label's object; a generic one to the object whose mask it hits."""
        if group.label is not None:
            return next((o for o in objects if o.label == group.label), ObjectSpec(group.label, ""))
        if len(objects) == 1:
            return objects[0]
        for obj in objects:
            seg = current(obj)
            if seg is None:
                continue
            h, w = seg.masks.height, seg.masks.width
            points = [(c.frame, c.x, c.y) for c in group.clicks]
            points += [(b.frame, (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for b in group.boxes]
            if any(seg.masks[f][min(int(y), h - 1), min(int(x), w - 1)] for f, x, y in points):
                return obj
        return objects[0]

    def _session_start(
        self, task: Mapping[str, Any], media: Media, obj: ObjectSpec
    ) -> tuple[VideoSegmentation, list[Box]]:
        """What a correction refines, never running the MLLM: the object's segmentation (cache, disk), else the
        task's stored prediction (frames: its masks; video: its largest box as a seed prompt), else nothing."""
        seg = self._known(self._seg_key(task, obj))
        if seg is not None:
            return seg, []
        if self._schema().layout == "frames":
            return self._stored_masks(task, media, obj) or _empty_segmentation(obj, media), []
        tracks = self._predicted_tracks(task, media, obj)
        boxes = tracks[0] if tracks else {}
        largest = max(boxes.values(), key=lambda b: (b.x1 - b.x0) * (b.y1 - b.y0), default=None)
        return _empty_segmentation(obj, media), [largest] if largest is not None else []

    def _our_predictions(self, task: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The task's predictions of this model version, newest first."""
        ours = [
            p
            for p in task.get("predictions") or []
            if isinstance(p, Mapping) and p.get("model_version") == self.model_version
        ]
        return sorted(ours, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0), reverse=True)

    def _stored_items(
        self, task: Mapping[str, Any], obj: ObjectSpec, stored: Mapping[str, Any] | None = None
    ) -> list[Mapping[str, Any]]:
        """The object's result items in one stored prediction (default: the task's latest of this version)."""
        if stored is None:
            ours = self._our_predictions(task)
            if not ours:
                return []
            stored = ours[0]
        name = self._schema().output_name
        return [
            r
            for r in stored.get("result") or []
            if isinstance(r, Mapping) and r.get("from_name") == name and _is_object_item(r, obj)
        ]

    def _predicted_tracks(
        self, task: Mapping[str, Any], media: Media, obj: ObjectSpec
    ) -> list[dict[int, Box]]:
        """The object's track in each stored prediction of ours, newest first (video layout; else [])."""
        if self._schema().layout != "video":
            return []
        info = media.info
        clock = VideoClock(info.fps, self._schema().framerate, info.num_frames)
        tracks = []
        for stored in self._our_predictions(task):
            items = self._stored_items(task, obj, stored)
            if not items:
                continue
            try:
                tracks.append(track_boxes(items[0], clock, info.width, info.height))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("task %s: stored track unusable (%s)", task.get("id"), exc)
        return tracks

    def _stored_masks(
        self, task: Mapping[str, Any], media: Media, obj: ObjectSpec
    ) -> VideoSegmentation | None:
        items = self._stored_items(task, obj)
        if not items:
            return None
        info = media.info
        try:
            masks = masks_from_brush_items(items, info.num_frames, info.height, info.width)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("task %s: stored masks unusable (%s)", task.get("id"), exc)
            return None
        return _empty_segmentation(obj, media, masks)

    # webhooks ------------------------------------------------------------------------------------------------
    def fit(self, event: str, data: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Training-free: a submitted/updated annotation matters when it carries a new TextArea prompt to segment,
        or (video tracks) boxes the annotator drew or moved: the browser sends no interactive request for those.
        Either way a background job does the work and posts a new prediction; the webhook answers at once."""
        if event not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return {"status": "ignored", "reason": f"DecAF is training-free; nothing to do for {event}"}
        schema = self.schema
        task = data.get("task")
        annotation = data.get("annotation") or {}
        if (
            schema is None
            or not isinstance(task, Mapping)
            or "id" not in task
            or not isinstance(annotation, Mapping)
        ):
            return {"status": "ignored", "reason": "no labeling config or task in the event"}
        task = dict(task, annotations=[annotation], drafts=[])
        reply = {"status": "ignored", "reason": "no prompt TextArea or video track in this project"}
        if schema.textarea_name is not None:
            reply = self._queue_new_prompt(task)
        if reply["status"] != "queued" and schema.layout == "video":
            reply = self._queue_track_correction(task, annotation)
        return reply

    def _queue_new_prompt(self, task: dict[str, Any]) -> dict[str, Any]:
        try:
            objects = self._schema().objects(task, None, self.settings.prompt_field)
        except PromptError as exc:
            return {"status": "ignored", "reason": str(exc)}
        if self.cached_prediction(task) is not None:  # an update that kept the prompt: nothing new to segment
            return {"status": "ignored", "reason": "already segmented for this prompt"}
        key = ("webhook", self.project_id, task["id"], tuple((o.label, o.prompt) for o in objects))
        run = partial(self.predict_task, task)
        self.runtime.jobs.submit(key, task["id"], run, self.project_id, deferred=True, replace_ok=True)
        return {"status": "queued", "task": task["id"], "prompts": [o.prompt for o in objects]}

    def _queue_track_correction(self, task: dict[str, Any], annotation: Mapping[str, Any]) -> dict[str, Any]:
        """Queue the annotation's tracks as a correction; the job decides which keyframes are new (that needs
        the video's size and our track, too slow for the webhook's reply)."""
        tracks = [
            r
            for r in annotation.get("result") or []
            if isinstance(r, Mapping) and r.get("type") == "videorectangle"
        ]
        if not tracks:
            return {"status": "ignored", "reason": "the annotation holds no video track"}
        context = {"result": tracks}
        key = ("track-fix", self.project_id, task["id"], annotation.get("id"), _digest(tracks))
        run = partial(self.correct_annotation, task, context, annotation.get("id"))
        self.runtime.jobs.submit(key, task["id"], run, self.project_id, deferred=True, replace_ok=True)
        return {"status": "queued", "task": task["id"], "tracks": len(tracks)}

    def correct_annotation(
        self, task: Mapping[str, Any], context: Mapping[str, Any], annotation_id: Any = None
    ) -> dict[str, Any] | None:
        """Runs in the job worker: the corrected tracks as a prediction to post, or None (nothing to post) when
        every keyframe matches a track we predicted, or the same boxes were already applied for this annotation."""
        # webhook tasks come without predictions: our stored tracks are read from the API
        if "predictions" not in task:
            task = dict(task, predictions=self.runtime.task_predictions(self.project_id, task["id"]))
        fixed = self.apply_corrections(task, context, applied=(self.project_id, task["id"], annotation_id))
        if fixed is None:
            log.info("task %s: the annotation's tracks hold no new box; nothing to post", task["id"])
        return fixed

    # helpers -------------------------------------------------------------------------------------------------
    def _media(self, task: Mapping[str, Any]) -> Media:
        return self.runtime.media.open(task, self._schema(), self.runtime.credentials(self.project_id))

    def _seg_key(self, task: Mapping[str, Any], obj: ObjectSpec) -> tuple:
        return (self.project_id, task.get("id"), media_key(self._schema(), task), obj.label, obj.prompt)

    def _known(self, key: tuple) -> VideoSegmentation | None:
        seg = self.runtime.cache.get(key)
        if seg is None:
            seg = self.runtime.store.load(key)
            if seg is not None:
                self.runtime.cache.put(key, seg)
        return seg

    def _keep(self, key: tuple, seg: VideoSegmentation) -> None:
        self.runtime.cache.put(key, seg)
        self.runtime.store.save(key, seg)


def _empty_segmentation(obj: ObjectSpec, media: Media, masks: FrameMasks | None = None) -> VideoSegmentation:
    """A segmentation with no DecAF run behind it (clicks only, or masks read back from Label Studio)."""
    info = media.info
    return VideoSegmentation(
        prompt=obj.prompt,
        object_name=obj.label or "",
        video=info,
        key_frame_indices=[],
        masks=masks if masks is not None else FrameMasks(info.num_frames, info.height, info.width),
    )


def _is_object_item(item: Mapping[str, Any], obj: ObjectSpec) -> bool:
    if str(item.get("id", "")).startswith(region_id(obj)):
        return True
    value = item.get("value") or {}
    labels = value.get("brushlabels") or value.get("labels") or []
    return obj.label is not None and labels == [obj.label]


def _digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
