"""What a labeling config asks of the backend: the layout, the tag names, the objects and their prompts.

Two layouts are supported (see label_config/):
- "frames": <Image valueList="$frames"> + <BrushLabels> (+ <KeyPointLabels smart> clicks, <RectangleLabels> boxes);
  one brush RLE result per frame and object, with `item_index`.
- "video": <Video value="$video"> + <VideoRectangle> (+ <Labels>); one box track per object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from ..errors import PromptError
from .errors import LabelConfigError, RequestError

NEGATIVE_CLICK_NAMES = frozenset({"negative", "neg", "background", "remove", "exclude"})
DEFAULT_VIDEO_FRAMERATE = 24.0  # the <Video framerate> default of the Label Studio frontend


@dataclass(frozen=True)
class ObjectSpec:
    """One object to segment: the label its regions carry and the text prompt DecAF reads."""

    label: str | None
    prompt: str

    @property
    def slug(self) -> str:
        """A short stable id: region ids derive from it, so a correction replaces the regions it corrects."""
        return hashlib.sha1(f"{self.label}\n{self.prompt}".encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Schema:
    layout: str  # "frames" | "video"
    object_name: str  # the <Image>/<Video> tag name (to_name of every result)
    data_key: str  # the task data field with the frame URLs / the video URL
    output_name: str  # <BrushLabels> / <VideoRectangle> name (from_name of predictions)
    labels: tuple[str, ...]  # object labels, in config order
    label_prompts: Mapping[str, str] = field(default_factory=dict)
    click_name: str | None = None  # <KeyPointLabels> name
    click_labels: Mapping[str, bool] = field(default_factory=dict)  # click label -> is a negative label
    box_names: tuple[str, ...] = ()  # <RectangleLabels> on the image (frames layout): box prompts
    textarea_name: str | None = None  # <TextArea> holding the annotator's prompt
    review_name: str | None = None  # optional read-only <TextArea> showing what the model thought
    framerate: float = DEFAULT_VIDEO_FRAMERATE

    @property
    def output_type(self) -> str:
        return "brushlabels" if self.layout == "frames" else "videorectangle"

    def objects(
        self, task: Mapping[str, Any], context: Mapping[str, Any] | None, prompt_field: str
    ) -> list[ObjectSpec]:
        """The objects of a task: the annotator's TextArea prompt, else task data `prompt_field`, else one per label.

        A config with a TextArea needs a prompt from the annotator or the task: label names are not used then.
        """
        first = self.labels[0] if self.labels else None
        text = self._textarea_prompt(task, context)
        if text is not None:
            return [ObjectSpec(first, _clean(text, f"the TextArea '{self.textarea_name}'"))]
        data = task.get("data") or {}
        if prompt_field in data and data[prompt_field] is not None:
            return self._data_prompts(data[prompt_field], prompt_field)
        if self.textarea_name:
            raise PromptError(
                f"no prompt: fill in the TextArea '{self.textarea_name}' or add a '{prompt_field}' field to the task data"
            )
        if not self.labels:
            raise PromptError(
                f"no prompt: the config has no labels and the task has no '{prompt_field}' field"
            )
        return [ObjectSpec(label, self.label_prompts.get(label) or label) for label in self.labels]

    def _data_prompts(self, value: Any, prompt_field: str) -> list[ObjectSpec]:
        where = f"task data '{prompt_field}'"
        first = self.labels[0] if self.labels else None
        if isinstance(value, str):
            return [ObjectSpec(first, _clean(value, where))]
        if isinstance(value, Mapping):  # {label: prompt}
            out = []
            for label, prompt in value.items():
                self.check_label(str(label))
                out.append(ObjectSpec(str(label), _clean(prompt, f"{where}['{label}']")))
            if not out:
                raise PromptError(f"no prompt: {where} is an empty mapping")
            return out
        if isinstance(value, Sequence) and value:
            return [ObjectSpec(first, _clean(v, f"{where}[{i}]")) for i, v in enumerate(value)]
        raise PromptError(
            f"{where} must be a text, a list of texts or a {{label: text}} mapping, not {value!r}"
        )

    def _textarea_prompt(self, task: Mapping[str, Any], context: Mapping[str, Any] | None) -> str | None:
        if not self.textarea_name:
            return None
        sources: list[Sequence[Any]] = []
        if context and isinstance(context.get("result"), list):
            sources.append(context["result"])
        for key in ("drafts", "annotations"):  # newest first: the annotator's latest words win
            entries = [a for a in task.get(key) or [] if isinstance(a, Mapping)]
            entries.sort(key=lambda a: str(a.get("updated_at") or a.get("created_at") or ""), reverse=True)
            sources.extend(a.get("result") or [] for a in entries)
        for results in sources:
            for item in results:
                if isinstance(item, Mapping) and item.get("from_name") == self.textarea_name:
                    text = (item.get("value") or {}).get("text")
                    text = " ".join(text) if isinstance(text, list) else text
                    if isinstance(text, str) and text.strip():
                        return text
        return None

    def check_label(self, label: str) -> None:
        if self.labels and label not in self.labels:
            raise RequestError(
                f"unknown label '{label}': '{self.output_name}' has labels {list(self.labels)}"
            )


def _clean(prompt: Any, where: str) -> str:
    if not isinstance(prompt, str):
        raise PromptError(f"{where} must be a text, not {type(prompt).__name__}")
    if not prompt.strip():
        raise PromptError(f"{where} is empty: describe the object to segment")
    return prompt.strip()


@lru_cache(maxsize=64)
def parse_schema(label_config: str) -> Schema:
    """Read a labeling config; raise LabelConfigError naming what is missing."""
    if not isinstance(label_config, str) or "<View" not in label_config:
        raise LabelConfigError("the labeling config is missing or is not a <View> XML config")
    try:
        li = LabelInterface(label_config)
    except Exception as exc:  # the sdk raises many kinds on bad XML
        raise LabelConfigError(f"the labeling config cannot be parsed: {exc}") from exc
    controls = dict(li._controls)
    objects = dict(li._objects)
    by_tag: dict[str, list[Any]] = {}
    for control in controls.values():
        by_tag.setdefault(control.tag, []).append(control)

    for brush in by_tag.get("BrushLabels", []):
        image = objects.get(brush.to_name[0])
        if image is not None and image.tag == "Image" and image.attr.get("valueList"):
            return _frames_schema(brush, image, by_tag)
    for track in by_tag.get("VideoRectangle", []):
        video = objects.get(track.to_name[0])
        if video is not None and video.tag == "Video":
            return _video_schema(track, video, by_tag)
    raise LabelConfigError(
        'unsupported labeling config: use <Image valueList="$frames"> with <BrushLabels> (per-frame masks) '
        "or <Video> with <VideoRectangle> (box tracks); see label_config/ for ready configs"
    )


def _frames_schema(brush: Any, image: Any, by_tag: dict[str, list[Any]]) -> Schema:
    labels, prompts = _labels(brush)
    clicks = [c for c in by_tag.get("KeyPointLabels", []) if image.name in c.to_name]
    click = next((c for c in clicks if c.attr.get("smart") == "true"), clicks[0] if clicks else None)
    click_labels = {}
    if click is not None:
        for name, tag in (click.labels_attrs or {}).items():
            negative = (
                str(tag.attr.get("negative", "")).lower() == "true" or name.lower() in NEGATIVE_CLICK_NAMES
            )
            click_labels[name] = negative
    boxes = tuple(c.name for c in by_tag.get("RectangleLabels", []) if image.name in c.to_name)
    return Schema(
        layout="frames",
        object_name=image.name,
        data_key=image.attr["valueList"].lstrip("$"),
        output_name=brush.name,
        labels=labels,
        label_prompts=prompts,
        click_name=click.name if click is not None else None,
        click_labels=click_labels,
        box_names=boxes,
        textarea_name=_textarea(by_tag),
        review_name=_review(by_tag, image.name),
    )


def _video_schema(track: Any, video: Any, by_tag: dict[str, list[Any]]) -> Schema:
    labels, prompts = _labels(track)
    if not labels:
        for control in by_tag.get("Labels", []):
            if video.name in control.to_name:
                labels, prompts = _labels(control)
                break
    value = str(video.attr.get("value", ""))
    if not value.startswith("$"):
        raise LabelConfigError(
            f"<Video name='{video.name}'> needs value=\"$field\" naming the task's video field"
        )
    try:
        framerate = float(video.attr.get("framerate", DEFAULT_VIDEO_FRAMERATE))
    except ValueError as exc:
        raise LabelConfigError(
            f"<Video framerate=...> is not a number: {video.attr.get('framerate')!r}"
        ) from exc
    if not framerate > 0:  # also NaN: VideoClock divides by it
        raise LabelConfigError(f"<Video framerate=...> must be a positive number, not {framerate}")
    return Schema(
        layout="video",
        object_name=video.name,
        data_key=value.lstrip("$"),
        output_name=track.name,
        labels=labels,
        label_prompts=prompts,
        textarea_name=_textarea(by_tag),
        review_name=_review(by_tag, video.name),
        framerate=framerate,
    )


def _labels(control: Any) -> tuple[tuple[str, ...], dict[str, str]]:
    attrs = control.labels_attrs or {}
    prompts = {
        name: str(tag.attr["prompt"])
        for name, tag in attrs.items()
        if str(tag.attr.get("prompt", "")).strip()
    }
    return tuple(attrs), prompts


def _textarea(by_tag: dict[str, list[Any]]) -> str | None:
    """The prompt TextArea: one named "prompt" or marked prompt="true"; other TextAreas (comments...) are not prompts."""
    for area in by_tag.get("TextArea", []):
        if area.name == "prompt" or str(area.attr.get("prompt", "")).lower() == "true":
            return area.name
    return None


def _review(by_tag: dict[str, list[Any]], object_name: str) -> str | None:
    """The review TextArea: one named "review" or marked review="true", on the media object. The backend writes
    the chosen object, the prompt, the confidence and the frames to check into it; configs without one still
    get the per-region scores and texts."""
    for area in by_tag.get("TextArea", []):
        marked = area.name == "review" or str(area.attr.get("review", "")).lower() == "true"
        if marked and object_name in area.to_name:
            return area.name
    return None
