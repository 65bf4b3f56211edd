"""The backend's HTTP protocol end to end, without models: a colour segmenter stands in for DecAF and a local
server for Label Studio's media and prediction API. Requests are shaped like Label Studio 1.23.2's."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from decaf_backend.backend.results import masks_from_brush_items, visible_frames
from decaf_backend.backend.runtime import Runtime
from decaf_backend.backend.server import create_app
from decaf_backend.backend.settings import Settings
from decaf_backend.video import open_video
from tests.backend_helpers import (
    COLOURS,
    ColourSegmenter,
    FakeLabelStudio,
    colour_client,
    colour_mask,
    disc_and_square_frames,
    without_review,
    write_frames,
)
from tests.conftest import encode_video

CONFIGS = Path(__file__).resolve().parents[1] / "label_config"
FRAMES_CONFIG = without_review((CONFIGS / "frames_masks.xml").read_text())
TEXTAREA_CONFIG = without_review((CONFIGS / "frames_masks_textarea.xml").read_text())
VIDEO_CONFIG = without_review((CONFIGS / "video_tracks.xml").read_text()).replace(
    'framerate="25.0"', 'framerate="10.0"'
)
N, H, W = 6, 48, 64


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeLabelStudio, np.ndarray]]:
    root = tmp_path_factory.mktemp("ls_media")
    frames = disc_and_square_frames(N, H, W)
    write_frames(root / "frames" / "clip", frames)
    (root / "upload" / "1").mkdir(parents=True)
    encode_video(root / "upload" / "1" / "clip.mp4", frames, fps=10)
    fake = FakeLabelStudio(root)
    yield fake, frames
    fake.close()


def _frame_urls() -> list[str]:
    return [f"/data/local-files/?d=frames/clip/f{i:04d}.png" for i in range(N)]


def _make(
    media: tuple[FakeLabelStudio, np.ndarray],
    tmp_path: Path,
    segmenter: ColourSegmenter | None = None,
    **kw: Any,
):
    fake, _ = media
    settings = Settings(
        label_studio_url=fake.url,
        label_studio_api_key=fake.token,
        model_dir=tmp_path / "model_dir",
        preload=False,
        **{"open_wait_s": 30.0, "batch_wait_s": 30.0, "interactive_wait_s": 30.0, **kw},
    )
    segmenter = segmenter or ColourSegmenter()
    runtime = Runtime(settings, pipeline_factory=lambda s: segmenter)
    return create_app(runtime).test_client(), segmenter, runtime


def _predict(
    client: Any, tasks: list[dict], config: str = FRAMES_CONFIG, context: Any = None, **kw: Any
) -> Any:
    body = {
        "tasks": tasks,
        "project": "1.1795678160",
        "label_config": config,
        "params": {"login": None, "password": None, "context": context},
    }
    return client.post("/predict", json=body, **kw)


def _task(tid: int, prompt: str | None = "the red disc", **data: Any) -> dict:
    data = {"frames": _frame_urls(), **data}
    if prompt is not None:
        data["prompt"] = prompt
    return {"id": tid, "data": data, "meta": {}, "annotations": [], "predictions": [], "project": 1}


def _click(x_px: float, y_px: float, index: int, positive: bool = True, label: str = "Object") -> dict:
    value = {
        "x": 100 * x_px / W,
        "y": 100 * y_px / H,
        "width": 0.25,
        "labels": [label],
        "keypointlabels": [label],
    }
    return {"original_width": W, "original_height": H, "image_rotation": 0, "item_index": index, "value": value,
            "is_positive": positive, "id": f"c{index}{x_px}", "from_name": "click", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}  # fmt: skip


def _opened(media: Any, tmp_path: Path, tid: int) -> tuple[np.ndarray, Any, ColourSegmenter, dict]:
    """Task `tid` opened on a fresh server: the frames, the client, its segmenter and the task's prediction."""
    client, segmenter, _ = _make(media, tmp_path)
    return media[1], client, segmenter, _predict(client, [_task(tid)]).get_json()["results"][0]


def _expected(frames: np.ndarray, *colours: str) -> np.ndarray:
    return np.stack([np.any([colour_mask(f, COLOURS[c]) for c in colours], axis=0) for f in frames])


def test_health_setup_and_metrics(media: Any, tmp_path: Path) -> None:
    client, _, _ = _make(media, tmp_path)
    health = client.get("/health").get_json()
    assert (
        health["status"] == "UP"
        and health["model_class"] == "DecafVideoModel"
        and health["model_loaded"] is False
    )
    setup = client.post(
        "/setup",
        json={
            "project": "1.17",
            "schema": FRAMES_CONFIG,
            "hostname": "http://localhost:8080",
            "access_token": "t",
        },
    )
    assert setup.status_code == 200 and setup.get_json() == {"model_version": "decaf-0.1.0"}
    bad = client.post(
        "/setup", json={"project": "1.17", "schema": "<View><Text name='t' value='$t'/></View>"}
    )
    assert bad.status_code == 400 and "unsupported labeling config" in bad.get_json()["error"]
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'decaf_requests_total{route="/setup",status="200"} 1' in text
        and "decaf_session_cache_bytes 0" in text
    )


def test_batch_predict_keeps_task_order_and_a_failing_task_gets_no_prediction(
    media: Any, tmp_path: Path
) -> None:
    _, frames = media
    client, segmenter, runtime = _make(media, tmp_path)
    broken = _task(2, frames=_frame_urls()[:2] + ["/data/local-files/?d=frames/clip/missing.png"])
    no_colour = _task(4, prompt="something plain")
    reply = _predict(client, [_task(1), broken, _task(3, prompt="the green square"), no_colour])
    assert reply.status_code == 200
    results = reply.get_json()["results"]
    assert len(results) == 4 and all(r["model_version"] == "decaf-0.1.0" for r in results[::2])
    for result, colour in ((results[0], "red"), (results[2], "green")):
        items = result["result"]
        assert [i["item_index"] for i in items] == list(range(N)) and result["score"] == pytest.approx(0.9)
        assert all(
            (i["original_width"], i["original_height"], i["to_name"], i["from_name"])
            == (W, H, "image", "mask")
            for i in items
        )
        np.testing.assert_array_equal(
            masks_from_brush_items(items, N, H, W).to_array(), _expected(frames, colour)
        )
    # failed (HTTP 404 on one frame; no colour): nothing for Label Studio to store, so it asks again next time
    assert results[1] == [] and results[3] == [] and segmenter.segment_calls == 3
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "decaf_task_failures_total 2" in metrics and 'decaf_errors_total{kind="task"} 2' in metrics
    again = _predict(client, [_task(1), _task(4, prompt="something plain")]).get_json()["results"]
    assert again == [results[0], []] and segmenter.segment_calls == 4  # red cached; the failed task re-ran


def test_task_opened_request_answers_fast_and_posts_the_prediction_later(media: Any, tmp_path: Path) -> None:
    fake, frames = media
    fake.predictions.clear()
    client, segmenter, _ = _make(media, tmp_path, open_wait_s=0.0)
    segmenter_segment = segmenter.segment

    release = threading.Event()

    def held_segment(video: Any, prompt: str, progress: Any = None) -> Any:
        release.wait(30)  # the segmentation cannot finish before the reply has been checked
        return segmenter_segment(video, prompt)

    segmenter.segment = held_segment  # type: ignore[method-assign]
    reply = _predict(client, [_task(11)])
    assert not fake.predictions  # the reply came while DecAF was still running
    assert reply.get_json()["results"] == [[]]  # nothing for Label Studio to store: no empty prediction
    release.set()
    deadline = time.monotonic() + 20
    while not fake.predictions and time.monotonic() < deadline:
        time.sleep(0.05)
    (posted,) = fake.predictions
    assert (
        posted["task"] == 11
        and posted["model_version"] == "decaf-0.1.0"
        and posted["score"] == pytest.approx(0.9)
    )
    np.testing.assert_array_equal(
        masks_from_brush_items(posted["result"], N, H, W).to_array(), _expected(frames, "red")
    )
    # the task already has our prediction: a later open with no prediction in LS is answered from the cache
    assert [r["result"] for r in _predict(client, [_task(11)]).get_json()["results"]] == [posted["result"]]
    assert len(fake.predictions) == 1


def test_correction_adds_and_removes_at_the_clicks_on_every_frame_without_a_new_mllm_pass(
    media: Any, tmp_path: Path
) -> None:
    frames, client, segmenter, first = _opened(media, tmp_path, 21)
    assert segmenter.segment_calls == 1
    green_y, green_x = np.argwhere(colour_mask(frames[3], COLOURS["green"]))[0]
    red_y, red_x = np.argwhere(colour_mask(frames[3], COLOURS["red"])).mean(axis=0)
    # the browser resends pending points of the label: a point of page 1 comes along with two on page 3
    context = {"result": [_click(float(red_x), float(red_y), 1, True), _click(green_x + 1.0, green_y + 1.0, 3),
                          _click(float(red_x), float(red_y), 3, positive=False)]}  # fmt: skip
    task = dict(_task(21), predictions=[dict(first, id=1)])
    reply = _predict(client, [task], context=context)
    assert reply.status_code == 200
    items = reply.get_json()["results"][0]["result"]
    assert [i["item_index"] for i in items] == list(range(N))  # every frame, each on its own page
    fixed = masks_from_brush_items(items, N, H, W).to_array()
    np.testing.assert_array_equal(fixed, _expected(frames, "green"))
    assert segmenter.segment_calls == 1 and segmenter.refine_calls == 1
    ((clicks, boxes),) = segmenter.refine_inputs
    assert [(c.frame, c.positive) for c in clicks] == [(1, True), (3, True), (3, False)] and boxes == []
    first_ids = {i["item_index"]: i["id"] for i in first["result"]}
    assert all(
        first_ids[i["item_index"]] == i["id"] for i in items
    )  # accepting replaces the predicted regions


TWO_OBJECTS = """<View><Image name="image" valueList="$frames"/>
<BrushLabels name="mask" toName="image"><Label value="Red" prompt="the red disc"/><Label value="Green" prompt="the green square"/></BrushLabels>
<KeyPointLabels name="click" toName="image" smart="true"><Label value="Red"/><Label value="Green"/><Label value="Negative"/></KeyPointLabels>
</View>"""


def test_several_labels_are_several_objects_and_a_generic_negative_goes_to_the_mask_it_hits(
    media: Any, tmp_path: Path
) -> None:
    _, frames = media
    client, segmenter, _ = _make(media, tmp_path)
    (first,) = _predict(client, [_task(25, prompt=None)], config=TWO_OBJECTS).get_json()["results"]
    by_label: dict[str, list] = {}
    for item in first["result"]:
        by_label.setdefault(item["value"]["brushlabels"][0], []).append(item)
    assert sorted(by_label) == ["Green", "Red"] and segmenter.segment_calls == 2
    for label, colour in (("Red", "red"), ("Green", "green")):
        np.testing.assert_array_equal(
            masks_from_brush_items(by_label[label], N, H, W).to_array(), _expected(frames, colour)
        )
    gy, gx = np.argwhere(colour_mask(frames[4], COLOURS["green"])).mean(axis=0)
    negative = _click(float(gx), float(gy), 4, positive=True, label="Negative")  # "Negative" label, no Alt
    (fixed,) = _predict(
        client, [_task(25, prompt=None)], config=TWO_OBJECTS, context={"result": [negative]}
    ).get_json()["results"]
    assert {i["value"]["brushlabels"][0] for i in fixed["result"]} == {"Green"}  # only the corrected object
    assert [i["id"] for i in fixed["result"]] == [i["id"] for i in by_label["Green"]]
    assert not masks_from_brush_items(fixed["result"], N, H, W).to_array().any()
    ((clicks, _),) = segmenter.refine_inputs
    assert [(c.frame, c.positive) for c in clicks] == [(4, False)]


def test_sessions_are_rebuilt_after_restart_from_disk_or_from_the_stored_prediction(
    media: Any, tmp_path: Path
) -> None:
    frames, client, _, first = _opened(media, tmp_path, 31)
    green_y, green_x = np.argwhere(colour_mask(frames[0], COLOURS["green"]))[0]
    context = {"result": [_click(green_x + 1.0, green_y + 1.0, 0)]}
    task = dict(_task(31), predictions=[dict(first, id=5)])
    for base in (tmp_path, tmp_path / "fresh"):  # same MODEL_DIR (disk store), then an empty one
        restarted, segmenter, runtime = _make(media, base, ColourSegmenter())
        items = _predict(restarted, [task], context=context).get_json()["results"][0]["result"]
        np.testing.assert_array_equal(
            masks_from_brush_items(items, N, H, W).to_array(), _expected(frames, "red", "green")
        )
        assert segmenter.segment_calls == 0 and segmenter.refine_calls == 1
        assert any((base / "model_dir" / "answers").rglob("*.json"))  # the prompts behind the answer
    clicks_only, segmenter, _ = _make(
        media, tmp_path / "third", ColourSegmenter()
    )  # never predicted: clicks alone
    items = _predict(clicks_only, [_task(31)], context=context).get_json()["results"][0]["result"]
    np.testing.assert_array_equal(
        masks_from_brush_items(items, N, H, W).to_array(), _expected(frames, "green")
    )
    assert segmenter.segment_calls == 0


def test_video_layout_predicts_a_track_and_a_drawn_box_refines_it(media: Any, tmp_path: Path) -> None:
    fake, _ = media
    frames = np.stack(list(open_video(fake.root / "upload" / "1" / "clip.mp4").iter_frames()))  # as decoded
    client, segmenter, _ = _make(media, tmp_path)
    task = {
        "id": 41,
        "data": {"video": "/data/upload/1/clip.mp4", "prompt": "the red disc"},
        "predictions": [],
    }
    (result,) = _predict(client, [task], config=VIDEO_CONFIG).get_json()["results"]
    (track,) = result["result"]
    assert track["type"] == "videorectangle" and (track["from_name"], track["to_name"]) == ("box", "video")
    assert track["value"]["framesCount"] == N and track["value"]["labels"] == ["Object"]
    assert visible_frames(track) == set(range(1, N + 1))
    # a box drawn around the green square on frame 3 (LS frame 3): a SAM2 box prompt, the red track is kept
    gy, gx = np.argwhere(colour_mask(frames[2], COLOURS["green"])).T
    key = {"frame": 3, "enabled": True, "rotation": 0, "x": 100 * gx.min() / W, "y": 100 * gy.min() / H,
           "width": 100 * (gx.max() + 1 - gx.min()) / W, "height": 100 * (gy.max() + 1 - gy.min()) / H, "time": 0.2}  # fmt: skip
    drawn = {
        "id": "new1",
        "type": "videorectangle",
        "from_name": "box",
        "to_name": "video",
        "value": {"sequence": [key], "framesCount": N},
    }
    context = {"result": [track, drawn]}  # our own unchanged track gives no prompt
    (fixed,) = _predict(client, [task], config=VIDEO_CONFIG, context=context).get_json()["results"][0][
        "result"
    ]
    ((clicks, boxes),) = segmenter.refine_inputs
    assert clicks == [] and [b.frame for b in boxes] == [2]
    union = _expected(frames, "red", "green")
    for k in fixed["value"]["sequence"]:
        ys, xs = np.nonzero(union[k["frame"] - 1])
        assert k["x"] == pytest.approx(100 * xs.min() / W) and k["width"] == pytest.approx(
            100 * (xs.max() + 1 - xs.min()) / W
        )
    assert segmenter.segment_calls == 1
    # after a restart with an empty MODEL_DIR: the stored track is what the annotator sees; one moved keyframe
    restarted, fresh, _ = _make(media, tmp_path / "restart", ColourSegmenter())
    moved = [dict(k) for k in track["value"]["sequence"]]
    moved[4] = dict(moved[4], x=moved[4]["x"] + 10.0)
    edited = dict(track, value=dict(track["value"], sequence=moved))
    stored = dict(task, predictions=[{"id": 3, "model_version": "decaf-0.1.0", "result": [track]}])
    _predict(restarted, [stored], config=VIDEO_CONFIG, context={"result": [edited]})
    ((clicks, boxes),) = fresh.refine_inputs
    largest = max(track["value"]["sequence"], key=lambda k: k["width"] * k["height"])
    assert [b.frame for b in boxes] == [largest["frame"] - 1, 4] and fresh.segment_calls == 0


def _wait_for_jobs(runtime: Runtime, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = runtime.jobs.stats()
        if stats["queued"] == stats["running"] == 0 and runtime.outbox.pending() == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"jobs still running: {runtime.jobs.stats()}, outbox {runtime.outbox.pending()}")


def test_video_annotation_webhook_turns_moved_boxes_into_a_new_prediction(media: Any, tmp_path: Path) -> None:
    """The browser sends no interactive request for VideoRectangle: a submitted annotation's moved box is the
    correction. Unchanged tracks (or an unchanged resubmission) post nothing; the MLLM never runs again."""
    fake, _ = media
    fake.predictions.clear()
    frames = np.stack(list(open_video(fake.root / "upload" / "1" / "clip.mp4").iter_frames()))  # as decoded
    client, segmenter, runtime = _make(media, tmp_path)
    task = {"id": 46, "data": {"video": "/data/upload/1/clip.mp4", "prompt": "the red disc"}}
    (track,) = _predict(client, [dict(task, predictions=[])], config=VIDEO_CONFIG).get_json()["results"][0][
        "result"
    ]
    # Label Studio stored the /predict reply; webhook bodies carry the task without its predictions
    fake.predictions.append(
        {"id": 1, "task": 46, "model_version": "decaf-0.1.0", "score": 0.9, "result": [track]}
    )

    def event(action: str, sequence: list[dict], annotation_id: int = 7) -> dict:
        edited = dict(track, origin="prediction-changed", value=dict(track["value"], sequence=sequence))
        return {"action": action, "annotation": {"id": annotation_id, "task": 46, "result": [edited]},
                "project": {"id": 1, "label_config": VIDEO_CONFIG}, "task": task}  # fmt: skip

    same = client.post("/webhook", json=event("ANNOTATION_CREATED", track["value"]["sequence"]))
    assert same.status_code == 201 and same.get_json()["status"] == "queued"
    _wait_for_jobs(runtime)
    assert (
        len(fake.predictions) == 1 and segmenter.refine_calls == 0
    )  # accepted as predicted: nothing happens

    # the annotator moved the box on LS frame 3 onto the green square, then pressed Update
    gy, gx = np.argwhere(colour_mask(frames[2], COLOURS["green"])).T
    moved = [dict(k) for k in track["value"]["sequence"]]
    (i,) = [j for j, k in enumerate(moved) if k["frame"] == 3]
    moved[i] = dict(moved[i], x=100 * gx.min() / W, y=100 * gy.min() / H,
                    width=100 * (gx.max() + 1 - gx.min()) / W, height=100 * (gy.max() + 1 - gy.min()) / H)  # fmt: skip
    refine = segmenter.refine

    release = threading.Event()

    def held_refine(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)  # the refinement cannot finish before the webhook's answer has been checked
        return refine(*args, **kwargs)

    segmenter.refine = held_refine  # type: ignore[method-assign]
    updated = client.post("/webhook", json=event("ANNOTATION_UPDATED", moved))
    assert updated.status_code == 201 and len(fake.predictions) == 1  # answered before the work is done
    release.set()
    _wait_for_jobs(runtime)
    assert len(fake.predictions) == 2
    posted = fake.predictions[-1]
    assert posted["task"] == 46 and posted["model_version"] == "decaf-0.1.0"
    ((clicks, boxes),) = segmenter.refine_inputs
    assert clicks == [] and [b.frame for b in boxes] == [2]  # only the moved keyframe is a prompt
    assert boxes[0].x0 == pytest.approx(gx.min()) and boxes[0].y1 == pytest.approx(gy.max() + 1)
    (fixed,) = posted["result"]
    assert fixed["id"] == track["id"] and fixed["type"] == "videorectangle"
    union = _expected(frames, "red", "green")
    for k in fixed["value"]["sequence"]:
        ys, xs = np.nonzero(union[k["frame"] - 1])
        assert k["x"] == pytest.approx(100 * xs.min() / W) and k["y"] == pytest.approx(100 * ys.min() / H)
    assert segmenter.segment_calls == 1  # no MLLM pass for the correction

    # the same annotation again (Update without changes): its moved box was applied already
    client.post("/webhook", json=event("ANNOTATION_UPDATED", moved))
    _wait_for_jobs(runtime)
    assert len(fake.predictions) == 2 and segmenter.refine_calls == 1

    # after a restart with an empty MODEL_DIR: the tracks come from Label Studio's API, the session is rebuilt
    client, fresh, restarted = _make(media, tmp_path / "restart", ColourSegmenter())
    client.post("/webhook", json=event("ANNOTATION_UPDATED", moved, 8))
    _wait_for_jobs(restarted)
    ((clicks, boxes),) = fresh.refine_inputs
    largest = max(fixed["value"]["sequence"], key=lambda k: k["width"] * k["height"])  # the newest track's
    assert [b.frame for b in boxes] == [largest["frame"] - 1, 2] and fresh.segment_calls == 0
    assert len(fake.predictions) == 3 and fake.predictions[-1]["task"] == 46


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "must be a JSON object"),
        (b'{"tasks": "x"}', 400, "non-empty list"),
        (b'{"tasks": [{"id": 1}], "label_config": "<View></View>"}', 400, "unsupported labeling config"),
    ],
)
def test_garbage_requests_get_clear_errors_and_the_server_keeps_serving(
    media: Any, tmp_path: Path, body: bytes, status: int, message: str
) -> None:
    client, _, _ = _make(media, tmp_path)
    reply = client.post("/predict", data=body, content_type="application/json")
    assert reply.status_code == status and message in reply.get_json()["error"]
    assert _predict(client, [_task(51)]).status_code == 200


@pytest.mark.parametrize(
    "context, task_change, status, message",
    [
        ({"result": [_click(W * 1.5, 3, 1)]}, {}, 422, "outside the frame"),
        ({"result": [_click(3, 3, 1, label="Cat")]}, {}, 400, "unknown label 'Cat'"),
        ({"result": [_click(3, 3, 1)]}, {"data": {"text": "hello"}}, 422, "not a video task"),
        (
            {"result": [_click(3, 3, 1)]},
            {"data": {"frames": ["http://127.0.0.1:9/x.png"]}},
            422,
            "is not allowed",  # not on Label Studio's origin: refused before any connection
        ),
    ],
)
def test_bad_corrections_get_clear_errors(
    media: Any, tmp_path: Path, context: dict, task_change: dict, status: int, message: str
) -> None:
    client, _, _ = _make(media, tmp_path)
    reply = _predict(client, [dict(_task(61), **task_change)], context=context)
    assert reply.status_code == status and message in reply.get_json()["error"]
    assert _predict(client, [_task(62)]).get_json()["results"][0]["result"]


def test_basic_auth_everywhere_but_health_and_webhook_secret(media: Any, tmp_path: Path) -> None:
    fake, frames = media
    fake.predictions.clear()
    client, segmenter, _ = _make(
        media, tmp_path, basic_auth_user="u1", basic_auth_pass="p1", webhook_secret="s3"
    )
    auth = {"Authorization": "Basic " + base64.b64encode(b"u1:p1").decode()}
    assert client.get("/health").status_code == 200
    assert client.post("/setup", json={"schema": FRAMES_CONFIG}).status_code == 401
    assert (
        client.post(
            "/setup",
            json={"schema": FRAMES_CONFIG},
            headers={"Authorization": "Basic " + base64.b64encode(b"u1:no").decode()},
        ).status_code
        == 401
    )
    assert client.post("/setup", json={"schema": FRAMES_CONFIG}, headers=auth).status_code == 200
    assert client.get("/metrics").status_code == 401
    assert (
        _predict(client, [_task(71)], headers={"X-Webhook-Secret": "s3"}).status_code == 401
    )  # secret: /webhook only
    # an annotation with a typed prompt arrives without basic auth, with the shared secret
    typed = {
        "from_name": "prompt",
        "to_name": "image",
        "type": "textarea",
        "value": {"text": ["the green square"]},
    }
    event = {"action": "ANNOTATION_CREATED", "annotation": {"id": 9, "result": [typed], "task": 72},
             "project": {"id": 1, "label_config": TEXTAREA_CONFIG}, "task": {"id": 72, "data": {"frames": _frame_urls()}}}  # fmt: skip
    assert client.post("/webhook", json=event).status_code == 401
    queued = client.post("/webhook", json=event, headers={"X-Webhook-Secret": "s3"})
    assert queued.status_code == 201 and queued.get_json()["prompts"] == ["the green square"]
    deadline = time.monotonic() + 20
    while not fake.predictions and time.monotonic() < deadline:
        time.sleep(0.05)
    (posted,) = fake.predictions
    assert posted["task"] == 72
    np.testing.assert_array_equal(
        masks_from_brush_items(posted["result"], N, H, W).to_array(), _expected(frames, "green")
    )
    updated = dict(event, action="ANNOTATION_UPDATED")  # same prompt: nothing new to post
    assert client.post("/webhook", json=updated, headers=auth).get_json()["status"] == "ignored"
    training = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}, headers=auth)
    assert training.status_code == 201 and training.get_json()["status"] == "ignored"


def test_textarea_project_without_a_prompt_yet_gets_no_prediction(media: Any, tmp_path: Path) -> None:
    client, segmenter, _ = _make(media, tmp_path)
    (result,) = _predict(client, [_task(81, prompt=None)], config=TEXTAREA_CONFIG).get_json()["results"]
    assert result == [] and segmenter.segment_calls == 0


def test_frames_in_other_image_formats_are_converted(media: Any, tmp_path: Path) -> None:
    fake, frames = media
    from PIL import Image

    folder = fake.root / "webp"
    folder.mkdir(exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"p{i}.webp", lossless=True)
    client, _, runtime = _make(media, tmp_path)
    task = _task(95, frames=[f"/data/local-files/?d=webp/p{i}.webp" for i in range(N)])
    (result,) = _predict(client, [task]).get_json()["results"]
    np.testing.assert_array_equal(
        masks_from_brush_items(result["result"], N, H, W).to_array(), _expected(frames, "red")
    )
    (folder_made,) = (tmp_path / "model_dir" / "media" / "frames").iterdir()
    assert sorted(p.name for p in folder_made.iterdir() if not p.name.startswith(".")) == [
        f"{i:06d}.png" for i in range(N)
    ]


def test_media_downloads_carry_the_token_and_respect_the_size_limit(media: Any, tmp_path: Path) -> None:
    fake, frames = media
    client, _, runtime = _make(media, tmp_path, max_media_mb=0.0001)
    (result,) = _predict(client, [_task(91)]).get_json()["results"]
    assert result == []  # every frame PNG is over 100 bytes: failed, no prediction
    with pytest.raises(Exception, match="over the 0 MB limit"):
        runtime.media.download(_frame_urls()[0], 91)
    client, _, runtime = _make(media, tmp_path / "ok")
    path = runtime.media.download(_frame_urls()[0], 91)
    assert Path(path).read_bytes() == (fake.root / "frames" / "clip" / "f0000.png").read_bytes()
    assert ("GET", "/data/local-files/?d=frames/clip/f0000.png", f"Token {fake.token}") in fake.requests
    no_token = Runtime(Settings(label_studio_url=fake.url, model_dir=tmp_path / "nt"))
    with pytest.raises(Exception, match="LABEL_STUDIO_API_KEY"):
        no_token.media.download(_frame_urls()[0], 91)


def test_setup_never_replaces_the_configured_label_studio_host_or_token(media: Any, tmp_path: Path) -> None:
    """An unauthenticated (or any) /setup names another host and token: downloads and posts keep going to the
    configured Label Studio with the configured key, and the key never goes to a host /setup named."""
    fake, _ = media
    other = FakeLabelStudio(tmp_path / "elsewhere", token="their-token")
    try:
        client, _, runtime = _make(media, tmp_path)
        setup = {
            "project": "1.17",
            "schema": FRAMES_CONFIG,
            "hostname": other.url,
            "access_token": "their-token",
        }
        assert client.post("/setup", json=setup).status_code == 200
        assert runtime.credentials(1) == (fake.url, fake.token)
        assert _predict(client, [_task(101)]).get_json()["results"][0]["result"]
        assert other.requests == []
        # only the key configured: a /setup host must not receive it, so Label Studio is unreachable
        key_only = Runtime(Settings(label_studio_api_key=fake.token, model_dir=tmp_path / "k", preload=False))
        key_only_client = create_app(key_only).test_client()
        assert key_only_client.post("/setup", json=setup).status_code == 200
        assert key_only.credentials(1) is None
        # only the URL configured: /setup's token may be used, with the configured host
        url_only = Runtime(Settings(label_studio_url=fake.url, model_dir=tmp_path / "u", preload=False))
        create_app(url_only).test_client().post("/setup", json=setup)
        assert url_only.credentials(1) == (fake.url, "their-token")
        # nothing configured: /setup is the only source (Label Studio 1.x style)
        bare = Runtime(Settings(model_dir=tmp_path / "n", preload=False))
        create_app(bare).test_client().post("/setup", json=setup)
        assert bare.credentials(1) == (other.url, "their-token")
    finally:
        other.close()


def test_secrets_never_appear_in_logs_replies_or_metrics(
    media: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake, _ = media
    secrets = {
        "key": "LSKEY0c0ffee0c0ffee",
        "password": "PASS0badc0de0badc0de",
        "hook": "HOOK0feedface0feed",
        "setup": "SETUPTOKEN0deadbeef",
        "query": "QSIG0abad1dea",
    }
    settings = Settings(
        label_studio_url=fake.url,
        label_studio_api_key=secrets["key"],  # wrong for the fake: every download is a 401
        basic_auth_user="u1",
        basic_auth_pass=secrets["password"],
        webhook_secret=secrets["hook"],
        model_dir=tmp_path / "model_dir",
        preload=False,
        open_wait_s=20.0,
        batch_wait_s=20.0,
    )
    client = colour_client(settings)
    auth = {"Authorization": "Basic " + base64.b64encode(f"u1:{secrets['password']}".encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(f"u1:{secrets['password']}x".encode()).decode()}
    replies = []
    with caplog.at_level("DEBUG"):
        replies.append(client.post("/setup", json={"schema": FRAMES_CONFIG}, headers=wrong))
        setup = {
            "project": "1.1",
            "schema": FRAMES_CONFIG,
            "hostname": fake.url,
            "access_token": secrets["setup"],
        }
        replies.append(client.post("/setup", json=setup, headers=auth))
        tasks = [
            _task(111),  # 401 from Label Studio with our (wrong) key
            _task(112, frames=[f"http://u1:{secrets['password']}@127.0.0.1:9/f.png"]),
            _task(
                113,
                frames=[
                    f"{fake.url}/plain/x.png?token={secrets['query']}&X-Amz-Signature={secrets['query']}"
                ],
            ),
        ]
        replies.append(_predict(client, tasks, headers=auth))
        context = {"result": [_click(3, 3, 1)]}
        replies.append(_predict(client, tasks[:1], context=context, headers=auth))
        replies.append(_predict(client, tasks[2:], context=context, headers=auth))
        replies.append(
            client.post("/webhook", json={"action": "X"}, headers={"X-Webhook-Secret": secrets["hook"] + "x"})
        )
        replies.append(client.get("/metrics", headers=auth))
        replies.append(client.get("/health"))
    assert [r.status_code for r in replies] == [401, 200, 200, 422, 422, 401, 200, 200]
    assert "HTTP 401 (check LABEL_STUDIO_API_KEY)" in replies[3].get_json()["error"]
    answers = "".join(r.get_data(as_text=True) for r in replies)
    text = caplog.text + repr(settings) + answers
    assert "decaf_task_failures_total 3" in text  # the failures happened and were reported
    assert [name for name, value in secrets.items() if value in text and name != "query"] == []
    # a signed URL's signature (task data, not our secret) stays out of our own messages; urllib3's DEBUG
    # log of the request line is the one place it shows
    ours = answers + "".join(r.getMessage() for r in caplog.records if r.name.startswith("decaf_backend"))
    assert "X-Amz-Signature=***" in ours and secrets["query"] not in ours
