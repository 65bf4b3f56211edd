"""End to end against a real Label Studio 1.23.2 and the real DecAF pipeline with tiny random models.

For each config in label_config/: a project, synthetic video tasks made by `import-videos`, the backend connected
as Label Studio's ML backend, predictions retrieved through the Data Manager action and read back from the API, a
correction round trip through /api/ml/<id>/interactive-annotating, and malformed requests that must not stop it.
Random weights make the masks meaningless; what is checked is every shape Label Studio stores and returns, and
that corrections never run the MLLM again. (test_backend_server.py checks mask content with a colour segmenter.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from werkzeug.serving import make_server

from decaf_backend.backend.model import DecafVideoModel
from decaf_backend.backend.results import decode_brush, visible_frames
from decaf_backend.backend.runtime import Runtime
from decaf_backend.backend.server import create_app
from decaf_backend.backend.settings import Settings
from decaf_backend.cli import main as cli_main
from decaf_backend.types import Box, Click
from tests.backend_helpers import without_review
from tests.conftest import encode_video, moving_disc_frames
from tests.ls_server import LabelStudioServer, free_port

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
CONFIGS = Path(__file__).resolve().parents[1] / "label_config"
N, H, W, FPS = 8, 48, 64, 10


class CountingPipeline:
    """The real pipeline, counting MLLM calls and the prompts of each correction."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.mllm_calls, self.refines = inner, 0, []
        for name in ("object_class", "background", "choose_object"):
            original = getattr(inner.mllm, name)

            def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.mllm_calls += 1
                return _original(*args, **kwargs)

            setattr(inner.mllm, name, counted)

    def segment(self, video: Any, prompt: str, progress: Any = None) -> Any:
        return self.inner.segment(video, prompt, progress)

    def correct(self, seg: Any, prompts: Any, session: Any = None, video: Any = None) -> Any:
        self.refines.append(
            ([p for p in prompts if isinstance(p, Click)], [p for p in prompts if isinstance(p, Box)])
        )
        return self.inner.correct(seg, prompts, session=session, video=video)


@pytest.fixture(scope="module")
def backend(
    label_studio: LabelStudioServer, tiny_models: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    from decaf_backend.pipeline import DecafPipeline

    settings = Settings(
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        model_dir=tmp_path_factory.mktemp("backend_model_dir"),
        mllm=str(tiny_models["qwen2_5_vl"]),
        sam2=str(tiny_models["sam2"]),
        device="cpu",
        batch_wait_s=90.0,
        open_wait_s=90.0,
        preload=False,
    )
    holder: dict[str, Any] = {}

    def factory(s: Settings) -> CountingPipeline:
        pipe = DecafPipeline.from_pretrained(s.mllm, s.sam2, device=s.device)
        holder["pipeline"] = CountingPipeline(pipe)
        return holder["pipeline"]

    runtime = Runtime(settings, pipeline_factory=factory)
    server = make_server("127.0.0.1", free_port(), create_app(runtime), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    runtime.pipeline()  # load before Label Studio's first /predict
    yield {"url": url, "runtime": runtime, "pipeline": holder["pipeline"], "settings": settings}
    server.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("e2e_videos")
    frames = moving_disc_frames(N, H, W)
    return [
        encode_video(folder / "disc_a.mp4", frames, fps=FPS),
        encode_video(folder / "disc_b.mp4", frames[::-1], fps=FPS),
    ]


def _project(ls: LabelStudioServer, config_name: str, backend: dict) -> tuple[int, int, str]:
    config = (CONFIGS / config_name).read_text().replace('framerate="25.0"', f'framerate="{FPS}.0"')
    config = without_review(config)
    project = ls.api("POST", "/api/projects", json={"title": config_name, "label_config": config})["id"]
    ml = ls.api(
        "POST",
        "/api/ml",
        json={"url": backend["url"], "project": project, "title": "decaf", "is_interactive": True},
    )
    assert ml["state"] == "CO" and ml["model_version"] == backend["settings"].model_version
    return project, ml["id"], config


def _import(ls: LabelStudioServer, project: int, videos: list[Path], *extra: str) -> list[int]:
    args = ["import-videos", "--url", ls.url, "--api-key", ls.token, "--project", str(project)]
    assert cli_main([*args, "--prompt", "the red disc", *extra, *map(str, videos)]) == 0
    tasks = ls.api("GET", f"/api/tasks?project={project}&page_size=100")["tasks"]
    return sorted(t["id"] for t in tasks)


def _retrieve(ls: LabelStudioServer, project: int) -> dict:
    return ls.api(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        json={"selectedItems": {"all": True, "excluded": []}},
    )


def _stored(ls: LabelStudioServer, task_id: int, version: str) -> dict:
    preds = [p for p in ls.api("GET", f"/api/predictions?task={task_id}") if p["model_version"] == version]
    assert len(preds) == 1, preds
    return preds[0]


def _our_prediction(backend: dict, project: int, config: str, task: dict) -> dict:
    """What the backend itself holds for the task (its cache): LS must have stored exactly this."""
    model = DecafVideoModel(project, config, runtime=backend["runtime"])
    found = model.cached_prediction(task)
    assert found is not None
    return found


def _check_frames(stored: dict, num_frames: int) -> None:
    items = stored["result"]
    assert [i["item_index"] for i in items] == list(range(num_frames))
    for item in items:
        assert (item["type"], item["from_name"], item["to_name"], item["image_rotation"]) == (
            "brushlabels",
            "mask",
            "image",
            0,
        )
        assert (item["original_width"], item["original_height"]) == (W, H)
        assert decode_brush(item, H, W).shape == (H, W)  # the sdk decodes it to one full-size mask


@pytest.mark.parametrize(
    "config_name, mode", [("frames_masks.xml", "upload"), ("frames_masks_textarea.xml", "local")]
)
def test_frame_sequence_projects(
    label_studio: LabelStudioServer, backend: dict, videos: list[Path], config_name: str, mode: str
) -> None:
    ls, version, pipe = label_studio, backend["settings"].model_version, backend["pipeline"]
    project, ml_id, config = _project(ls, config_name, backend)
    extra = ["--local-root", str(ls.media_root)] if mode == "local" else []
    task_ids = _import(ls, project, videos, "--stride", "2", *extra)
    assert len(task_ids) == 2
    before = pipe.mllm_calls
    assert _retrieve(ls, project)["processed_items"] == 2
    assert pipe.mllm_calls > before
    for tid in task_ids:
        stored = _stored(ls, tid, version)
        _check_frames(stored, N // 2)
        task = ls.api("GET", f"/api/tasks/{tid}")
        assert stored["result"] == _our_prediction(backend, project, config, task)["result"]

    # a positive and a negative (Alt) click on the middle page, as the browser sends them
    tid, mllm_before, middle = task_ids[0], pipe.mllm_calls, N // 4
    clicks = [_keypoint(40.0, 50.0, middle, True), _keypoint(10.0, 10.0, middle, False)]
    reply = ls.api(
        "POST", f"/api/ml/{ml_id}/interactive-annotating", json={"task": tid, "context": {"result": clicks}}
    )
    data = reply["data"]
    assert data["model_version"] == version
    _check_frames({"result": data["result"]}, N // 2)
    assert pipe.mllm_calls == mllm_before  # the correction never runs the MLLM
    got_clicks, got_boxes = pipe.refines[-1]
    assert [(c.frame, c.positive) for c in got_clicks] == [
        (middle, True),
        (middle, False),
    ] and got_boxes == []
    assert got_clicks[0].x == pytest.approx(0.4 * W) and got_clicks[0].y == pytest.approx(0.5 * H)
    masks_now = np.stack([decode_brush(i, H, W) for i in data["result"]])
    key = (project, tid, _media_key(config, ls.api("GET", f"/api/tasks/{tid}")), "Object", "the red disc")
    live = backend["runtime"].sessions.cache.get((key, tuple(got_clicks)))
    np.testing.assert_array_equal(masks_now, live.masks.to_array())  # the reply is the re-propagated session
    assert len(ls.api("GET", f"/api/predictions?task={tid}")) == 1  # interactive replies are not stored

    # malformed requests through Label Studio: clear error (backend log + reply), and it keeps serving
    outside = ls.api(
        "POST",
        f"/api/ml/{ml_id}/interactive-annotating",
        json={"task": tid, "context": {"result": [_keypoint(140.0, 50.0, middle, True)]}},
    )
    assert "422" in " ".join(outside.get("errors", []))
    unknown = dict(_keypoint(40.0, 50.0, middle, True), value={"x": 40, "y": 50, "keypointlabels": ["Cat"]})
    bad_label = ls.api(
        "POST",
        f"/api/ml/{ml_id}/interactive-annotating",
        json={"task": tid, "context": {"result": [unknown]}},
    )
    assert "400" in " ".join(bad_label.get("errors", []))
    direct = requests.post(
        backend["url"] + "/predict",
        data=b"{garbage",
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert direct.status_code == 400 and "JSON object" in direct.json()["error"]
    again = ls.api(
        "POST", f"/api/ml/{ml_id}/interactive-annotating", json={"task": tid, "context": {"result": clicks}}
    )
    assert [i["item_index"] for i in again["data"]["result"]] == list(range(N // 2))


def test_failing_tasks_get_no_prediction_and_the_batch_goes_on(
    label_studio: LabelStudioServer, backend: dict, videos: list[Path]
) -> None:
    ls, version = label_studio, backend["settings"].model_version
    project, _, _ = _project(ls, "frames_masks_textarea.xml", backend)
    good = _import(ls, project, videos[:1])
    bad = ls.api(
        "POST",
        f"/api/projects/{project}/import?return_task_ids=true",
        json=[
            {"text": "not a video task"},
            {"frames": ["/data/local-files/?d=nowhere/missing.png"], "prompt": "the red disc"},
            {
                "frames": ls.api("GET", f"/api/tasks/{good[0]}")["data"]["frames"]
            },  # no prompt in a TextArea project
        ],
    )["task_ids"]
    assert _retrieve(ls, project)["processed_items"] == 4
    _check_frames(_stored(ls, good[0], version), N)
    for tid in bad:  # nothing stored: Label Studio asks again next time
        assert ls.api("GET", f"/api/predictions?task={tid}") == []
    # the annotator types the prompt and submits: the annotation webhook queues DecAF, the masks are posted
    no_prompt = bad[2]
    typed = {
        "from_name": "prompt",
        "to_name": "image",
        "type": "textarea",
        "value": {"text": ["the red disc"]},
    }
    ls.api("POST", f"/api/tasks/{no_prompt}/annotations", json={"result": [typed]})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(ls.api("GET", f"/api/predictions?task={no_prompt}")) < 1:
        time.sleep(0.5)
    newest = max(ls.api("GET", f"/api/predictions?task={no_prompt}"), key=lambda p: p["id"])
    assert newest["model_version"] == version
    _check_frames(newest, N)


def test_video_track_project(label_studio: LabelStudioServer, backend: dict, videos: list[Path]) -> None:
    ls, version, pipe = label_studio, backend["settings"].model_version, backend["pipeline"]
    project, ml_id, config = _project(ls, "video_tracks.xml", backend)
    task_ids = _import(ls, project, videos)
    assert _retrieve(ls, project)["processed_items"] == 2
    for tid in task_ids:
        stored = _stored(ls, tid, version)
        task = ls.api("GET", f"/api/tasks/{tid}")
        assert stored["result"] == _our_prediction(backend, project, config, task)["result"]
        for track in stored["result"]:  # random weights may leave the object nowhere: then there is no track
            assert track["type"] == "videorectangle" and track["value"]["framesCount"] == N
            assert visible_frames(track) <= set(range(1, N + 1))
    # a box drawn on the middle frame: a SAM2 box prompt, the whole track comes back
    tid, mllm_before = task_ids[0], pipe.mllm_calls
    key = {
        "frame": N // 2,
        "enabled": True,
        "rotation": 0,
        "x": 20,
        "y": 30,
        "width": 25,
        "height": 35,
        "time": 0.3,
    }
    drawn = {"id": "drawn1", "type": "videorectangle", "from_name": "box", "to_name": "video", "origin": "manual",
             "value": {"framesCount": N, "duration": N / FPS, "labels": ["Object"], "sequence": [key]}}  # fmt: skip
    reply = ls.api(
        "POST", f"/api/ml/{ml_id}/interactive-annotating", json={"task": tid, "context": {"result": [drawn]}}
    )
    assert reply["data"]["model_version"] == version and pipe.mllm_calls == mllm_before
    clicks, boxes = pipe.refines[-1]
    assert clicks == [] and [b.frame for b in boxes][-1] == N // 2 - 1
    assert (boxes[-1].x0, boxes[-1].y0, boxes[-1].x1, boxes[-1].y1) == pytest.approx(
        (0.2 * W, 0.3 * H, 0.45 * W, 0.65 * H)
    )
    for track in reply["data"]["result"]:
        assert track["type"] == "videorectangle" and visible_frames(track) <= set(range(1, N + 1))


def test_video_track_correction_through_the_annotation_webhook(
    label_studio: LabelStudioServer, backend: dict, videos: list[Path]
) -> None:
    """The browser sends no interactive request for VideoRectangle: a saved annotation with a moved box is the
    correction, and the corrected track arrives as a new prediction (no MLLM pass)."""
    ls, version, pipe = label_studio, backend["settings"].model_version, backend["pipeline"]
    project, _, config = _project(ls, "video_tracks.xml", backend)
    (tid,) = _import(ls, project, videos[:1])
    assert _retrieve(ls, project)["processed_items"] == 1
    first = _stored(ls, tid, version)
    mllm_before, refines_before, middle = pipe.mllm_calls, len(pipe.refines), N // 2
    # as the browser saves it: our track with the box on the middle frame moved (random weights may leave no
    # track at all: then the annotator drew one)
    moved = {"frame": middle, "enabled": True, "rotation": 0, "x": 20.0, "y": 30.0, "width": 25.0, "height": 35.0,
             "time": (middle - 1) / FPS}  # fmt: skip
    if first["result"]:
        track = dict(first["result"][0], origin="prediction-changed")
        keys = [k for k in track["value"]["sequence"] if k["frame"] != middle]
        track["value"] = dict(track["value"], sequence=sorted([*keys, moved], key=lambda k: k["frame"]))
    else:
        track = {"id": "drawn1", "type": "videorectangle", "from_name": "box", "to_name": "video", "origin": "manual",
                 "value": {"framesCount": N, "duration": N / FPS, "labels": ["Object"], "sequence": [moved]}}  # fmt: skip
    ls.api("POST", f"/api/tasks/{tid}/annotations", json={"result": [track]})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(ls.api("GET", f"/api/predictions?task={tid}")) < 2:
        time.sleep(0.5)
    newest = max(ls.api("GET", f"/api/predictions?task={tid}"), key=lambda p: p["id"])
    assert newest["id"] != first["id"] and newest["model_version"] == version
    assert pipe.mllm_calls == mllm_before  # the correction never runs the MLLM
    (clicks, boxes), *rest = pipe.refines[refines_before:]
    assert rest == [] and clicks == [] and [b.frame for b in boxes][-1] == middle - 1
    assert (boxes[-1].x0, boxes[-1].y0, boxes[-1].x1, boxes[-1].y1) == pytest.approx(
        (0.2 * W, 0.3 * H, 0.45 * W, 0.65 * H)
    )
    for item in newest["result"]:
        assert item["type"] == "videorectangle" and visible_frames(item) <= set(range(1, N + 1))
    # the posted track is the re-propagated session's (random SAM2 weights may give the same boxes as before:
    # that the track follows the moved box is checked with the colour segmenter in test_backend_server.py)
    # corrections never replace the starting segmentation: the same annotation's tracks, asked again, give it
    task = dict(ls.api("GET", f"/api/tasks/{tid}"), predictions=[first])
    again = DecafVideoModel(project, config, runtime=backend["runtime"]).apply_corrections(
        task, {"result": [track]}
    )
    assert again is not None and newest["result"] == again["result"]


def test_opening_a_task_answers_fast_and_the_prediction_arrives_later(
    label_studio: LabelStudioServer, backend: dict, videos: list[Path]
) -> None:
    """Label Studio calls /predict (no context) when a task without prediction opens, and stores the reply."""
    ls, runtime, version = label_studio, backend["runtime"], backend["settings"].model_version
    project, _, config = _project(ls, "frames_masks.xml", backend)
    (tid,) = _import(ls, project, videos[1:], "--fps", "5")
    runtime.settings = replace(backend["settings"], open_wait_s=0.0)  # "the job takes longer than the wait"
    try:
        start = time.monotonic()
        opened = ls.api("GET", f"/api/tasks/{tid}")  # what the browser's labeling view requests
        assert time.monotonic() - start < 5.0
        assert [
            p for p in opened.get("predictions", []) if p["model_version"] == version
        ] == []  # nothing empty stored
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not ls.api("GET", f"/api/predictions?task={tid}"):
            time.sleep(0.5)
        stored = _stored(ls, tid, version)  # posted by the backend's job through the API
        _check_frames(stored, N // 2)
        assert (
            stored["result"]
            == _our_prediction(backend, project, config, ls.api("GET", f"/api/tasks/{tid}"))["result"]
        )
        reopened = ls.api("GET", f"/api/tasks/{tid}")
        assert [p["id"] for p in reopened["predictions"]] == [stored["id"]]
    finally:
        runtime.settings = backend["settings"]


def _keypoint(x: float, y: float, index: int, positive: bool) -> dict:
    return {"original_width": W, "original_height": H, "image_rotation": 0, "item_index": index,
            "value": {"x": x, "y": y, "width": 0.25, "labels": ["Object"], "keypointlabels": ["Object"]},
            "is_positive": positive, "id": f"k{index}{x}{positive}", "from_name": "click", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}  # fmt: skip


def _media_key(config: str, task: dict) -> str:
    from decaf_backend.backend.media import media_key
    from decaf_backend.backend.schema import parse_schema

    return media_key(parse_schema(config), task)


def test_label_studio_server_is_the_pinned_version(label_studio: LabelStudioServer) -> None:
    assert requests.get(label_studio.url + "/api/version", timeout=10).json()["release"] == "1.23.2"
