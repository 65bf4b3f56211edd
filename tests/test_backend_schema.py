"""Label config parsing and prompt resolution of the Label Studio backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from decaf_backend.backend.errors import LabelConfigError, RequestError
from decaf_backend.backend.schema import ObjectSpec, parse_schema
from decaf_backend.errors import PromptError

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"

MULTI = """<View>
  <Image name="img" valueList="$pages"/>
  <BrushLabels name="m" toName="img">
    <Label value="Dog" prompt="the dog about to jump"/><Label value="Ball"/>
  </BrushLabels>
  <KeyPointLabels name="k" toName="img" smart="true"><Label value="Dog" smart="true"/><Label value="Remove"/></KeyPointLabels>
  <RectangleLabels name="r" toName="img"><Label value="Dog"/></RectangleLabels>
  <TextArea name="comment" toName="img"/>
</View>"""


def test_ready_configs_parse_to_both_layouts() -> None:
    layouts = {p.name: parse_schema(p.read_text()) for p in sorted(CONFIGS.glob("*.xml"))}
    assert {s.layout for s in layouts.values()} == {"frames", "video"}
    frames = layouts["frames_masks.xml"]
    assert (frames.object_name, frames.data_key, frames.output_name, frames.output_type) == (
        "image",
        "frames",
        "mask",
        "brushlabels",
    )
    assert frames.click_name == "click" and frames.click_labels == {"Object": False, "Negative": True}
    video = layouts["video_tracks.xml"]
    assert (video.object_name, video.data_key, video.output_name, video.framerate) == (
        "video",
        "video",
        "box",
        25.0,
    )
    assert video.labels == ("Object",) and video.output_type == "videorectangle"
    assert layouts["frames_masks_textarea.xml"].textarea_name == "prompt"


def test_per_label_prompts_use_the_prompt_attribute_else_the_value() -> None:
    schema = parse_schema(MULTI)
    assert schema.data_key == "pages" and schema.box_names == ("r",)
    assert schema.textarea_name is None  # a TextArea not named "prompt" is not a prompt
    assert schema.click_labels == {"Dog": False, "Remove": True}
    objects = schema.objects({"data": {"pages": []}}, None, "prompt")
    assert objects == [ObjectSpec("Dog", "the dog about to jump"), ObjectSpec("Ball", "Ball")]
    assert objects[0].slug != objects[1].slug


def test_task_prompt_wins_over_labels_and_accepts_a_label_mapping() -> None:
    schema = parse_schema(MULTI)
    assert schema.objects({"data": {"prompt": " the red ball "}}, None, "prompt") == [
        ObjectSpec("Dog", "the red ball")
    ]
    mapped = schema.objects({"data": {"q": {"Ball": "the ball", "Dog": "a dog"}}}, None, "q")
    assert mapped == [ObjectSpec("Ball", "the ball"), ObjectSpec("Dog", "a dog")]
    with pytest.raises(RequestError, match="unknown label 'Cat'"):
        schema.objects({"data": {"prompt": {"Cat": "a cat"}}}, None, "prompt")
    with pytest.raises(PromptError, match="empty"):
        schema.objects({"data": {"prompt": "   "}}, None, "prompt")
    with pytest.raises(PromptError, match="must be a text"):
        schema.objects({"data": {"prompt": 3}}, None, "prompt")


def test_textarea_prompt_comes_from_context_then_newest_annotation() -> None:
    schema = parse_schema((CONFIGS / "frames_masks_textarea.xml").read_text())
    with pytest.raises(PromptError, match="TextArea 'prompt'"):
        schema.objects({"data": {"frames": []}}, None, "prompt")
    old = {"updated_at": "2026-01-01", "result": [{"from_name": "prompt", "value": {"text": ["old words"]}}]}
    new = {"updated_at": "2026-02-01", "result": [{"from_name": "prompt", "value": {"text": ["the cat"]}}]}
    task = {"data": {"prompt": "from data"}, "annotations": [old, new]}
    assert schema.objects(task, None, "prompt") == [ObjectSpec("Object", "the cat")]
    context = {"result": [{"from_name": "prompt", "type": "textarea", "value": {"text": ["typed now"]}}]}
    assert schema.objects(task, context, "prompt") == [ObjectSpec("Object", "typed now")]
    assert schema.objects({"data": {"prompt": "from data"}}, None, "prompt") == [
        ObjectSpec("Object", "from data")
    ]


@pytest.mark.parametrize(
    "config, message",
    [
        ("", "missing"),
        (
            "<View><Image name='i' value='$image'/><BrushLabels name='b' toName='i'><Label value='x'/></BrushLabels></View>",
            "unsupported",
        ),
        ("<View><Text name='t' value='$text'/></View>", "unsupported"),
        ("<View><Video name='v' value='$video'", "cannot be parsed"),
    ],
)
def test_unusable_configs_are_named(config: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message):
        parse_schema(config)
