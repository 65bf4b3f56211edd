"""The Label Studio model class, in the 2.x ML backend's shape: `setup()`, `predict(tasks, context)`, `fit(event, data)`.

It only translates between Label Studio and the core; the other jobs live beside it:
- pre-annotation (`context` empty): each task is a batch-lane job (jobs.py) run through the runtime's executor;
  the reply holds the finished ones, later ones go through the outbox (outbox.py);
- correction (`context` with clicks/boxes): the object's starting segmentation (segmentations.py) corrected by the
  request's prompts in the interactive lane (lanes.py, corrections.py); no MLLM pass;
- stored predictions and drafts are read by predictions.py; webhooks are handled by webhooks.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

from ..errors import DecafError, PromptError
from ..types import Box, FrameMasks, VideoSegmentation
from . import predictions as stored
from .context import Frame, ObjectPrompts, is_interactive, parse_prompts
from .errors import LabelConfigError, RequestError
from .jobs import BATCH, DONE, FAILED, REMOTE, Job, describe_error
from .media import Media, media_key
from .results import VideoClock, mask_bbox, prediction, segmentation_prediction
from .runtime import Runtime, get_runtime
from .schema import ObjectSpec, Schema, parse_schema

log = logging.getLogger(__name__)


class StillPrelabeling(DecafError):
    """A correction on a task whose pre-annotation has not produced the object's masks yet."""


class CorrectionFailed(DecafError):
    """A correction the device could not run (out of memory); nothing was recorded as applied."""


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
        """Per task, in order: a prediction dict, or [] (nothing to store: still computing, or failed)."""
        self._schema()
        if is_interactive(context):
            if len(tasks) != 1 or not isinstance(tasks[0], Mapping):
                raise RequestError(f"a correction request must carry exactly one task, not {len(tasks)}")
            return [self.correct(tasks[0], context)]
        return self.prefill(tasks)

    def prefill(self, tasks: Sequence[Any]) -> list[Any]:
        out: list[Any] = [None] * len(tasks)
        pending: list[tuple[int, Job]] = []
        lane = self.runtime.batch_lane(len(tasks))  # large batches (or DECAF_RAY_ADDRESS): the Ray workers
        for i, task in enumerate(tasks):
            if not isinstance(task, Mapping) or "id" not in task:
                raise RequestError("every task must be an object with an 'id'")
            out[i] = self.cached_prediction(task)
            if out[i] is None:
                key = (
                    "task",
                    self.project_id,
                    task["id"],
                    content_digest(task.get("data"), self.label_config),
                )
                run = self._prelabel_run(task, lane)
                job = self.runtime.jobs.submit(key, task["id"], run, self.project_id, lane=lane)
                pending.append((i, job))
        wait = self.settings.open_wait_s if len(tasks) == 1 else self.settings.batch_wait_s
        if self.runtime.credentials(self.project_id) is None:
            # nothing could be posted later: wait as long as Label Studio does
            wait = max(wait, self.settings.interactive_wait_s)
        self.runtime.jobs.wait([job for _, job in pending], wait)
        for i, job in pending:
            out[i] = self._reply_for(job)
        return out

    def _prelabel_run(self, task: Mapping[str, Any], lane: str = BATCH) -> Callable[[], dict[str, Any]]:
        runtime, project = self.runtime, self.project_id
        executor = runtime.remote_executor() if lane == REMOTE else runtime.executor

        def run() -> dict[str, Any]:
            try:
                return executor.predict(project, self.label_config, dict(task))
            finally:  # corrections waiting on this task answer now (masks, or "not yet")
                runtime.segmentations.wake(project, task["id"])

        return run

    def _reply_for(self, job: Job) -> Any:
        settled = self.runtime.jobs.settle(job)
        if settled.state == DONE:
            return settled.prediction
        if settled.state == FAILED:
            # no prediction: Label Studio stores nothing and asks again on the next open or retrieve
            log.warning("task %s: no prediction because %s", job.task_id, settled.error)
            self.runtime.metrics.inc("task_failures_total")
            self.runtime.metrics.inc("errors_total", kind="task")
            return []
        log.info("task %s: still computing; its prediction will be posted to Label Studio", job.task_id)
        self.runtime.metrics.inc("predictions_deferred_total")
        return []

    def predict_task(self, task: Mapping[str, Any]) -> dict[str, Any]:
        """The full pre-annotation of one task (every object, every frame); raises on failure."""
        objects = self._schema().objects(task, None, self.settings.prompt_field)
        media = self._media(task)
        segs = [self.segmentation(task, media, obj) for obj in objects]
        self.runtime.metrics.inc("tasks_predicted_total")
        return self._assemble(objects, segs)

    def cached_prediction(self, task: Mapping[str, Any]) -> dict[str, Any] | None:
        """The task's prediction when every object is already segmented (cache or disk); no download, no model."""
        try:
            objects = self._schema().objects(task, None, self.settings.prompt_field)
        except PromptError:
            return None
        segs = [self.runtime.segmentations.known(self._seg_key(task, obj)) for obj in objects]
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
        """The object's starting segmentation: from the cache, the disk store, or one MLLM + SAM2 run (which pauses
        between stages while a correction is in flight)."""
        key = self._seg_key(task, obj)
        runtime = self.runtime
        seg = runtime.segmentations.known(key)
        if seg is not None:
            return seg
        with runtime.segment_lock:
            seg = runtime.segmentations.known(key)
            if seg is None:
                runtime.metrics.inc("segment_runs_total")
                runtime.lanes.batch_checkpoint()
                live = runtime.pipeline().segment(media.reader, obj.prompt, runtime.lanes.batch_checkpoint)
                runtime.sessions.keep_starting(key, live)
                seg = runtime.segmentations.keep(key, live)
        return seg

    # corrections ---------------------------------------------------------------------------------------------
    def correct(self, task: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """An interactive correction: the corrected objects, or an empty result when the context holds no prompt."""
        fixed = self.apply_corrections(task, context)
        if fixed is None:
            log.info("task %s: the context holds no click or box; nothing to correct", task.get("id"))
            return prediction([], 0.0, self.model_version)
        return fixed

    def apply_corrections(
        self, task: Mapping[str, Any], context: Mapping[str, Any], applied: Hashable | None = None
    ) -> dict[str, Any] | None:
        """Each object's starting segmentation corrected by the context's clicks/boxes (no MLLM pass), as a
        prediction; None when the context holds no prompt. With `applied` (a key for the source, e.g. an
        annotation), prompts identical to the last ones applied for that key are not new: a resubmitted
        annotation posts nothing."""
        schema = self._schema()
        media = self._media(task)
        info = media.info
        frame = Frame(info.num_frames, info.width, info.height)
        clock = VideoClock(info.fps, schema.framerate, info.num_frames) if schema.layout == "video" else None
        try:
            objects = schema.objects(task, context, self.settings.prompt_field)
        except PromptError:  # no prompt yet: clicks alone still drive SAM2
            objects = [ObjectSpec(label, "") for label in schema.labels] or [ObjectSpec(None, "")]
        groups = self._prompt_groups(task, media, objects, context, frame, clock)
        if not groups:
            return None
        signature = tuple((obj, tuple(g.prompts)) for g, obj in groups)
        if applied is not None and not self.runtime.first_application(applied, signature):
            return None
        fixed: list[tuple[ObjectSpec, VideoSegmentation]] = []
        for group, obj in groups:
            fixed.append((obj, self._corrected(task, media, obj, group.prompts)))
        done = {obj for obj, _ in fixed}
        others = [
            (o, self.runtime.segmentations.known(self._seg_key(task, o))) for o in objects if o not in done
        ]
        unchanged = [(o, seg) for o, seg in others if seg is not None]
        return self._assemble([obj for obj, _ in fixed], [seg for _, seg in fixed], unchanged)

    def _corrected(
        self, task: Mapping[str, Any], media: Media, obj: ObjectSpec, prompts: Sequence[Any]
    ) -> VideoSegmentation:
        """The object's segmentation from its starting state + the annotator's accepted prompts + this request's."""
        runtime, key = self.runtime, self._seg_key(task, obj)
        start, seeds = self._starting(task, media, obj)
        info = media.info
        draft = None
        if self._schema().layout == "frames":
            draft = stored.draft_masks(task, self._schema(), obj, info.num_frames, info.height, info.width)
        accepted = runtime.sessions.accepted_prompts(key, draft)
        try:
            with runtime.lanes.interactive():
                corrected, applied = runtime.sessions.correct(
                    runtime.pipeline(), key, start, [*seeds, *accepted, *prompts], media.reader
                )
        except RuntimeError as exc:  # GPU out of memory: report it; the server and other tasks go on
            reason = describe_error(exc)
            if not reason.startswith("GPU out of memory"):
                raise
            runtime.metrics.inc("errors_total", kind="out_of_memory")
            raise CorrectionFailed(f"task {task.get('id')}: {reason}; try again") from exc
        runtime.metrics.inc("corrections_total")
        runtime.metrics.inc("refine_runs_total", applied)
        return corrected

    def _starting(
        self, task: Mapping[str, Any], media: Media, obj: ObjectSpec
    ) -> tuple[VideoSegmentation, list[Box]]:
        """What a correction starts from, never running the MLLM: the object's segmentation (cache, disk; waiting
        for the task's own running pre-annotation), else the task's stored prediction (frames: its masks; video:
        its largest box as a seed prompt), else nothing."""
        key, runtime = self._seg_key(task, obj), self.runtime
        seg = runtime.segmentations.known(key)
        if seg is not None:
            return seg, []
        running = [
            j for j in runtime.jobs.active_for_task(task.get("id"), self.project_id) if j.lane == BATCH
        ]
        if running and obj.prompt:
            runtime.jobs.prioritize(task.get("id"))
            seg = runtime.segmentations.wait_for(key, self.settings.interactive_wait_s)
            if seg is not None:
                return seg, []
            if [j for j in runtime.jobs.active_for_task(task.get("id"), self.project_id) if j.lane == BATCH]:
                raise StillPrelabeling(
                    f"task {task.get('id')} is still being pre-labeled: its masks are not ready yet, "
                    "click again in a moment"
                )
        info = media.info
        schema = self._schema()
        if schema.layout == "frames":
            masks = stored.stored_masks(
                task, schema, obj, self.model_version, info.num_frames, info.height, info.width
            )
            return _empty_segmentation(obj, media, masks), []
        clock = VideoClock(info.fps, schema.framerate, info.num_frames)
        tracks = stored.predicted_tracks(
            task, schema, obj, self.model_version, clock, info.width, info.height
        )
        boxes = tracks[0] if tracks else {}
        largest = max(boxes.values(), key=lambda b: (b.x1 - b.x0) * (b.y1 - b.y0), default=None)
        return _empty_segmentation(obj, media), [largest] if largest is not None else []

    def _prompt_groups(
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
        info = media.info
        shown: dict[ObjectSpec, tuple[VideoSegmentation | None, list[dict[int, Box]]]] = {}

        def reference(obj: ObjectSpec) -> tuple[VideoSegmentation | None, list[dict[int, Box]]]:
            """What the annotator saw of an object: our starting masks, else the stored prediction's masks; plus
            every track of ours stored for the task (an annotation may still hold an earlier one)."""
            if obj not in shown:
                seg = self.runtime.segmentations.known(self._seg_key(task, obj))
                tracks: list[dict[int, Box]] = []
                if seg is None and schema.layout == "frames":
                    masks = stored.stored_masks(
                        task, schema, obj, self.model_version, info.num_frames, info.height, info.width
                    )
                    seg = _empty_segmentation(obj, media, masks) if masks is not None else None
                if clock is not None:
                    tracks = stored.predicted_tracks(
                        task, schema, obj, self.model_version, clock, info.width, info.height
                    )
                shown[obj] = (seg, tracks)
            return shown[obj]

        def known_box(label: str | None, index: int) -> list[Box]:
            seg, tracks = reference(next((o for o in objects if o.label == label), objects[0]))
            boxes = [track[index] for track in tracks if index in track]
            box = mask_bbox(seg.masks[index]) if seg is not None else None
            return boxes if box is None else [Box(index, *box), *boxes]

        groups = parse_prompts(context, schema, frame, clock, known_box)
        return [(g, _pick_object(g, objects, lambda o: reference(o)[0])) for g in groups]

    # webhooks ------------------------------------------------------------------------------------------------
    def fit(self, event: str, data: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        from .webhooks import handle_event

        return handle_event(self, event, data)

    # helpers -------------------------------------------------------------------------------------------------
    def _media(self, task: Mapping[str, Any]) -> Media:
        return self.runtime.media.open(task, self._schema(), self.runtime.credentials(self.project_id))

    def _seg_key(self, task: Mapping[str, Any], obj: ObjectSpec) -> tuple:
        return (self.project_id, task.get("id"), media_key(self._schema(), task), obj.label, obj.prompt)


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


def content_digest(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def submit_prediction_job(
    model: DecafVideoModel, task: Mapping[str, Any], key: Hashable, replace_ok: bool
) -> Job:
    """A deferred batch job pre-annotating `task` (its prediction is posted through the outbox)."""
    return model.runtime.jobs.submit(
        key, task["id"], model._prelabel_run(task), model.project_id, deferred=True, replace_ok=replace_ok
    )


__all__ = ["DecafVideoModel", "StillPrelabeling", "project_id_of", "submit_prediction_job"]
