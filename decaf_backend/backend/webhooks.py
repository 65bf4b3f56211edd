"""Label Studio's annotation webhooks (`fit`): a submitted/updated annotation matters when it carries a new TextArea
prompt to segment, or (video tracks, which the browser never sends interactively) boxes the annotator drew or moved.

Either way a background job does the work and posts a new prediction through the outbox; the webhook answers at
once. A track correction follows the rule of interactive corrections: the starting segmentation corrected by the
boxes of the submitted annotation only, never by what earlier submissions held.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

from ..errors import PromptError
from .jobs import INTERACTIVE
from .model import DecafVideoModel, content_digest, submit_prediction_job

log = logging.getLogger(__name__)


def handle_event(model: DecafVideoModel, event: str, data: Mapping[str, Any]) -> dict[str, Any]:
    if event not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        return {"status": "ignored", "reason": f"DecAF is training-free; nothing to do for {event}"}
    schema = model.schema
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
        reply = _queue_new_prompt(model, task)
    if reply["status"] != "queued" and schema.layout == "video":
        reply = _queue_track_correction(model, task, annotation)
    return reply


def _queue_new_prompt(model: DecafVideoModel, task: dict[str, Any]) -> dict[str, Any]:
    try:
        objects = model._schema().objects(task, None, model.settings.prompt_field)
    except PromptError as exc:
        return {"status": "ignored", "reason": str(exc)}
    if model.cached_prediction(task) is not None:  # an update that kept the prompt: nothing new to segment
        return {"status": "ignored", "reason": "already segmented for this prompt"}
    key = ("webhook", model.project_id, task["id"], tuple((o.label, o.prompt) for o in objects))
    submit_prediction_job(model, task, key, replace_ok=True)
    return {"status": "queued", "task": task["id"], "prompts": [o.prompt for o in objects]}


def _queue_track_correction(
    model: DecafVideoModel, task: dict[str, Any], annotation: Mapping[str, Any]
) -> dict[str, Any]:
    """Queue the annotation's tracks as a correction in the interactive lane; the job decides which keyframes are
    new (that needs the video's size and our track, too slow for the webhook's reply)."""
    tracks = [
        r
        for r in annotation.get("result") or []
        if isinstance(r, Mapping) and r.get("type") == "videorectangle"
    ]
    if not tracks:
        return {"status": "ignored", "reason": "the annotation holds no video track"}
    context = {"result": tracks}
    key = ("track-fix", model.project_id, task["id"], annotation.get("id"), content_digest(tracks))
    run = partial(correct_annotation, model, task, context, annotation.get("id"))
    model.runtime.jobs.submit(
        key, task["id"], run, model.project_id, deferred=True, replace_ok=True, lane=INTERACTIVE
    )
    return {"status": "queued", "task": task["id"], "tracks": len(tracks)}


def correct_annotation(
    model: DecafVideoModel, task: Mapping[str, Any], context: Mapping[str, Any], annotation_id: Any = None
) -> dict[str, Any] | None:
    """Runs in the interactive lane's worker: the corrected tracks as a prediction to post, or None (nothing to
    post) when every keyframe matches a track we predicted, or the same boxes were already applied for this
    annotation."""
    # webhook tasks come without predictions: our stored tracks are read from the API
    if "predictions" not in task:
        task = dict(task, predictions=model.runtime.task_predictions(model.project_id, task["id"]))
    fixed = model.apply_corrections(task, context, applied=(model.project_id, task["id"], annotation_id))
    if fixed is None:
        log.info("task %s: the annotation's tracks hold no new box; nothing to post", task["id"])
    return fixed
