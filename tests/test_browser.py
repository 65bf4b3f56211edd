"""The annotator's workflow in a real browser: headless Debian Chromium (Playwright) against a real Label Studio
1.23.2 and the DecAF backend (`python -m decaf_backend serve`) with tiny random models.

Random weights make every mask arbitrary, so nothing here expects a shape: each check compares what the browser
shows or saves with what the backend produced (the stored prediction, the suggestion it returned) and with the
request the browser really sent. Screenshots of every step go to $DECAF_SCREENSHOT_DIR/<test> (default
test-artifacts/browser/<test>).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from decaf_backend.backend.results import decode_brush, visible_frames
from decaf_backend.cli import main as cli_main
from tests.browser_helpers import (
    Box2D,
    LabelingSession,
    chromium_executable,
    hex_colour,
    label_group_index,
    mask_agreement,
    screenshot_region,
    signed_in_session,
    stroke_coverage,
)
from tests.conftest import encode_video, moving_disc_frames
from tests.ls_server import LabelStudioServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.labelstudio]
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "label_config"
N, H, W, FPS = 8, 72, 96, 10
PROMPT = "the red disc"
PREDICTION_TIMEOUT_S = float(os.environ.get("DECAF_BROWSER_PREDICTION_TIMEOUT", "600"))


def _missing(reason: str) -> None:
    """Skip with the reason, or fail where the browser is required (DECAF_REQUIRE_BROWSER=1, as in CI)."""
    if os.environ.get("DECAF_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the Python package playwright is not installed (pip install playwright)")
    exe = chromium_executable()
    if exe is None:
        _missing("no chromium on PATH (apt-get install -y chromium) and DECAF_CHROMIUM is not set")
    return exe


@pytest.fixture(scope="module")
def decaf_backend_url(
    label_studio: LabelStudioServer, tiny_models: dict, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The backend as users run it: `python -m decaf_backend serve`, configured through environment variables."""
    workdir = tmp_path_factory.mktemp("browser_backend")
    port = free_port()
    env = dict(
        os.environ,
        LABEL_STUDIO_URL=label_studio.url,
        LABEL_STUDIO_API_KEY=label_studio.token,
        DECAF_MLLM=str(tiny_models["qwen2_5_vl"]),
        DECAF_SAM2=str(tiny_models["sam2"]),
        DECAF_DEVICE="cpu",
        MODEL_DIR=str(workdir / "model_dir"),
        # answer a one-task /predict at once with "still computing" and post the prediction when done: what real
        # models always do (minutes per video), made certain here where tiny models could finish in time
        DECAF_OPEN_WAIT_S="0",
    )
    log_path = workdir / "backend.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "decaf_backend", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the backend exited:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                health = requests.get(url + "/health", timeout=2).json()
                if health.get("model_loaded"):
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the backend did not load its models:\n{log_path.read_text()[-3000:]}")
            time.sleep(1.0)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def disc_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_video(
        tmp_path_factory.mktemp("browser_video") / "disc.mp4", moving_disc_frames(N, H, W), fps=FPS
    )


def _project(ls: LabelStudioServer, config_name: str, backend_url: str) -> tuple[int, str, str]:
    """A project with a ready config from label_config/ and the backend connected; returns its model version too."""
    config = (CONFIGS / config_name).read_text().replace('framerate="25.0"', f'framerate="{FPS}.0"')
    project = ls.api(
        "POST", "/api/projects", json={"title": f"browser {config_name}", "label_config": config}
    )["id"]
    ml = ls.api(
        "POST",
        "/api/ml",
        json={"url": backend_url, "project": project, "title": "decaf", "is_interactive": True},
    )
    assert ml["state"] == "CO", ml
    return project, config, ml["model_version"]


def _import_task(ls: LabelStudioServer, project: int, video: Path, *extra: str) -> int:
    args = ["import-videos", "--url", ls.url, "--api-key", ls.token, "--project", str(project)]
    assert cli_main([*args, "--prompt", PROMPT, *extra, str(video)]) == 0
    (task_id,) = [t["id"] for t in ls.api("GET", f"/api/tasks?project={project}&page_size=10")["tasks"]]
    return task_id


def _prelabeled_task(ls: LabelStudioServer, project: int, video: Path, *extra: str) -> tuple[int, dict]:
    """Import the video with `import-videos`, ask for predictions as a user would (Data Manager action), and wait for
    the backend's prediction to be stored (it may answer at once or post it when its job is done)."""
    task_id = _import_task(ls, project, video, *extra)
    ls.api(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    return task_id, _wait_prediction(ls, task_id)


def _wait_prediction(ls: LabelStudioServer, task_id: int) -> dict:
    """The task's one non-empty prediction, once stored."""
    deadline = time.monotonic() + PREDICTION_TIMEOUT_S
    while time.monotonic() < deadline:
        preds = [p for p in ls.api("GET", f"/api/predictions?task={task_id}") if p["result"]]
        if preds:
            assert len(preds) == 1, preds
            return preds[0]
        time.sleep(2.0)
    raise AssertionError(f"no prediction stored for task {task_id} after {PREDICTION_TIMEOUT_S:.0f} s")


def _download_frames(ls: LabelStudioServer, urls: list[str]) -> list[np.ndarray]:
    """The frames exactly as Label Studio serves them to the browser."""
    from PIL import Image

    frames = []
    for url in urls:
        r = ls.session.get(ls.url + url, timeout=60)
        r.raise_for_status()
        frames.append(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")))
    return frames


def _label_colour(config: str, control: str, label: str) -> np.ndarray:
    root = ET.fromstring(config)
    for el in root.iter():
        if el.get("name") == control:
            for child in el:
                if child.get("value") == label and child.get("background"):
                    return hex_colour(child.get("background"))
    raise AssertionError(f"no background colour for label {label!r} of {control!r}")


def _masks_by_frame(items: list[dict], from_name: str) -> dict[int, np.ndarray]:
    """{item_index: mask} of brush items; two items on one frame would be a duplicate region (an error here)."""
    out: dict[int, np.ndarray] = {}
    for item in items:
        if item.get("type") != "brushlabels" or item.get("from_name") != from_name:
            continue
        index = item.get("item_index")
        assert index is not None, f"brush item without item_index: {item.get('id')}"
        assert index not in out, f"two masks on frame {index}"
        out[index] = decode_brush(item, item["original_height"], item["original_width"])
    return out


def _check_pages(
    session: LabelingSession,
    frames: list[np.ndarray],
    masks: dict[int, np.ndarray],
    colour: np.ndarray,
    step: str,
    pages: list[int] | None = None,
) -> None:
    """Each page shows its own frame's mask: painted pixels inside it, none outside (edges left out), and it
    agrees with that mask better than with any other frame's (different) mask."""
    for k in range(len(frames)) if pages is None else pages:
        session.go_to_page(k)
        assert session.page_position() == (k + 1, len(frames))
        session.shot(f"{step}-page{k + 1}")
        pixels, to_shot, clear = session.frame_pixels()
        agreement = mask_agreement(pixels, to_shot, clear, frames[k], masks[k], colour)
        assert agreement.matches(min_inside=0.95, max_outside=0.05), (
            f"{step}: page {k + 1} does not show frame {k}'s mask: {agreement}"
        )
        own = agreement.inside - agreement.outside
        for other, mask in masks.items():
            if other != k and (mask != masks[k]).mean() > 0.01:
                theirs = mask_agreement(pixels, to_shot, clear, frames[k], mask, colour)
                assert theirs.inside - theirs.outside < own, (
                    f"{step}: page {k + 1} shows frame {other}'s mask"
                )


def _red_centre(frame: np.ndarray) -> tuple[float, float]:
    red = (frame[..., 0] > 150) & (frame[..., 1] < 100) & (frame[..., 2] < 100)
    assert red.any(), "no red disc in the frame"
    v, u = np.nonzero(red)
    return float(u.mean()), float(v.mean())


def _check_prediction_tab(ui: LabelingSession, prediction: dict) -> None:
    """The prediction has its own tab next to the annotator's ("<model version> · <score>%", the version may be
    elided in the tab)."""
    tabs = ui.annotation_tabs()
    score = f"{100 * prediction['score']:.2f}%"
    assert len(tabs) == 2 and score in tabs[1], (
        f"expected the annotator's tab and one showing {score}: {tabs}"
    )


def _visible_point(
    ui: LabelingSession, mask: np.ndarray, away_from: tuple[float, float]
) -> tuple[float, float]:
    """A frame pixel centre inside `mask` (outside it when no interior pixel shows) that the view shows uncovered,
    10 px or more from the view's edges, as far as possible from `away_from`."""
    from scipy.ndimage import binary_erosion

    pixels, to_shot, clear = ui.frame_pixels()
    for region in (binary_erosion(mask, border_value=1), ~mask, np.ones_like(mask)):
        v, u = np.nonzero(region)
        rows, cols = to_shot(u, v)
        margin = 10
        inside = (rows >= margin) & (rows < pixels.shape[0] - margin) & (cols >= margin)
        inside &= cols < pixels.shape[1] - margin
        ok = np.zeros_like(inside)
        ok[inside] = clear[rows[inside], cols[inside]]
        if ok.any():
            u, v = u[ok], v[ok]
            far = np.argmax((u - away_from[0]) ** 2 + (v - away_from[1]) ** 2)
            return float(u[far]) + 0.5, float(v[far]) + 0.5
    raise AssertionError("no part of the frame is visible")


def _check_click_request(call: Any, index: int, x: float, y: float, positive: bool) -> None:
    sent = call.request["context"]["result"]
    last = sent[-1]
    assert last["type"] == "keypointlabels" and last["from_name"] == "click" and last["to_name"] == "image"
    assert last["item_index"] == index and last["is_positive"] is positive
    assert (last["original_width"], last["original_height"]) == (W, H)
    assert last["value"]["x"] == pytest.approx(100 * x / W, abs=0.8)
    assert last["value"]["y"] == pytest.approx(100 * y / H, abs=0.8)


def _check_suggestion(call: Any, version: str) -> dict[int, np.ndarray]:
    """The correction reply: a mask for every frame, each with its frame's confidence, and the review text."""
    data = call.response["data"]
    assert data["model_version"] == version, data.get("model_version")
    items = [i for i in data["result"] if i["type"] != "textarea"]
    assert sorted(i["item_index"] for i in items) == list(range(N)), "the correction must cover every frame"
    for item in items:
        assert (item["type"], item["from_name"], item["to_name"]) == ("brushlabels", "mask", "image")
        assert (item["original_width"], item["original_height"], item["image_rotation"]) == (W, H, 0)
        assert 0.0 <= item["score"] <= 1.0, "every re-propagated mask carries its frame's confidence"
    (review,) = [i for i in data["result"] if i["type"] == "textarea"]
    assert review["from_name"] == "review" and review["value"]["text"][-1].startswith("Check first:")
    return _masks_by_frame(items, "mask")


def _review_lines(result: list[dict]) -> list[str]:
    (review,) = [r for r in result if r["type"] == "textarea" and r["from_name"] == "review"]
    return list(review["value"]["text"])


def _check_review_shown(ui: LabelingSession, result: list[dict]) -> None:
    """What the model thought is on screen: the review text above the frame (chosen object, prompt, confidence,
    frames to check), each mask's confidence in the Regions list, and a mask's details once selected."""
    lines = _review_lines(result)
    assert lines[0].startswith("MLLM chose '") and f"for the prompt '{PROMPT}'" in lines[0], lines
    assert lines[1].startswith("Confidence ") and lines[-1].startswith("Check first: page "), lines
    shown = ui.view_text()
    for line in lines:
        assert line in shown, f"the review line {line!r} is not in the labeling view"
    assert ui.text_top(lines[0]) < ui.image_top(), "the review text sits above the frame"
    brushes = [r for r in result if r["type"] == "brushlabels"]
    rows = ui.region_rows()
    assert len(rows) == len(brushes) == N, rows
    assert sorted(r.split()[-1] for r in rows) == sorted(f"{b['score']:.2f}" for b in brushes), (
        "every mask's confidence shows next to it in the Regions list"
    )
    ui.select_region(0)
    shown = ui.view_text()
    row_score = rows[0].split()[-1]
    details = [b["meta"]["text"] for b in brushes if f"{b['score']:.2f}" == row_score]
    assert any(all(line in shown for line in text.split("\n")) for text in details), (
        f"the selected mask's details ({details}) are not shown"
    )
    ui.shot("review-region-details")
    ui.page.keyboard.press("Escape")  # unselect: a selected region takes the next clicks
    ui.settle(0.5)


def test_frame_sequence_masks_and_smart_clicks(
    label_studio: LabelStudioServer, decaf_backend_url: str, chromium: str, disc_video: Path
) -> None:
    ls = label_studio
    project, config, version = _project(ls, "frames_masks.xml", decaf_backend_url)
    task_id, prediction = _prelabeled_task(ls, project, disc_video, "--format", "png")
    assert prediction["model_version"] == version
    predicted = _masks_by_frame(prediction["result"], "mask")
    assert sorted(predicted) == list(range(N)) and all(m.shape == (H, W) for m in predicted.values())
    frames = _download_frames(ls, ls.api("GET", f"/api/tasks/{task_id}")["data"]["frames"])
    mask_colour = _label_colour(config, "mask", "Object")
    click_group = label_group_index(config, "click")
    middle = N // 2

    with signed_in_session(chromium, ls, "frame_sequence") as ui:
        ui.open_task(project, task_id)
        ui.shot("opened")
        _check_prediction_tab(ui, prediction)
        _check_review_shown(ui, prediction["result"])
        _check_pages(ui, frames, predicted, mask_colour, "prediction")

        # corrections on the middle frame: hide the masks (a click on a mask selects it), pick the smart keypoint
        ui.ready_for_clicks(middle)
        ui.pick_smart_keypoint()
        ui.shot("smart-keypoint")
        x, y = _red_centre(frames[middle])
        first = ui.smart_click(100 * x / W, 100 * y / H, "Object", group=click_group)
        ui.shot("positive-click")
        _check_click_request(first, middle, x, y, positive=True)
        suggested = _check_suggestion(first, version)
        assert ui.suggestion_count() == N

        # the negative point: inside the suggested mask where it can be, where the view shows it, far from the
        # positive one (the frame is drawn larger than its view, so its borders are partly hidden)
        nx, ny = _visible_point(ui, suggested[middle], (x, y))
        second = ui.smart_click(100 * nx / W, 100 * ny / H, "Object", group=click_group, negative=True)
        ui.shot("negative-click")
        _check_click_request(second, middle, nx, ny, positive=False)
        signs = [i["is_positive"] for i in second.request["context"]["result"] if i["item_index"] == middle]
        assert signs == [True, False], "the second request carries both points of the frame"
        corrected = _check_suggestion(second, version)

        ui.accept_suggestions()
        assert ui.suggestion_count() == 0
        ui.set_regions_hidden(False)
        ui.shot("accepted")
        shown = ui.view_text()
        assert all(line in shown for line in _review_lines(second.result)), "the review text follows the fix"
        _check_pages(ui, frames, corrected, mask_colour, "accepted")
        ui.submit()
        ui.shot("submitted")

    (annotation,) = ls.api("GET", f"/api/tasks/{task_id}/annotations")
    saved = _masks_by_frame(annotation["result"], "mask")
    assert sorted(saved) == list(range(N)), "the saved annotation holds one mask per frame"
    assert not any(i["type"] == "keypointlabels" for i in annotation["result"]), "smart points are not saved"
    for k in range(N):
        np.testing.assert_array_equal(
            saved[k], corrected[k], err_msg=f"frame {k}: saved != accepted suggestion"
        )
    assert (saved[middle] != predicted[middle]).any(), (
        "the clicked frame's mask must differ from the prediction"
    )


def test_auto_accept_puts_a_clicks_masks_on_their_own_pages(
    label_studio: LabelStudioServer, decaf_backend_url: str, chromium: str, disc_video: Path
) -> None:
    """With "Auto-Accept Suggestions" on, a click's re-propagated masks become regions at once: no pending
    suggestion drawn on every page, each page shows its own mask, and there is still one mask per frame."""
    ls = label_studio
    project, config, version = _project(ls, "frames_masks.xml", decaf_backend_url)
    task_id, prediction = _prelabeled_task(ls, project, disc_video, "--format", "png")
    frames = _download_frames(ls, ls.api("GET", f"/api/tasks/{task_id}")["data"]["frames"])
    mask_colour = _label_colour(config, "mask", "Object")
    middle = N // 2

    with signed_in_session(chromium, ls, "auto_accept") as ui:
        ui.open_task(project, task_id)
        ui.ready_for_clicks(middle)
        ui.enable_auto_accept()
        ui.pick_smart_keypoint()
        x, y = _red_centre(frames[middle])
        call = ui.smart_click(100 * x / W, 100 * y / H, "Object", group=label_group_index(config, "click"))
        ui.shot("clicked-auto-accepted")
        _check_click_request(call, middle, x, y, positive=True)
        fixed = _check_suggestion(call, version)
        assert ui.suggestion_count() == 0, "auto-accept leaves no pending suggestion"
        ui.set_regions_hidden(False)
        rows = ui.region_rows()
        assert len(rows) == N, f"one region per frame after the auto-accepted fix, not {rows}"
        shown = ui.view_text()
        assert all(line in shown for line in _review_lines(call.result)), "the review text follows the fix"
        _check_pages(ui, frames, fixed, mask_colour, "auto-accepted", pages=[0, middle, N - 1])
        ui.submit()

    (annotation,) = ls.api("GET", f"/api/tasks/{task_id}/annotations")
    saved = _masks_by_frame(annotation["result"], "mask")  # fails on two masks for one frame
    assert sorted(saved) == list(range(N))
    for k in range(N):
        np.testing.assert_array_equal(saved[k], fixed[k], err_msg=f"frame {k}: saved != auto-accepted reply")


def test_video_track_is_drawn_in_the_player(
    label_studio: LabelStudioServer, decaf_backend_url: str, chromium: str, disc_video: Path
) -> None:
    ls = label_studio
    project, config, version = _project(ls, "video_tracks.xml", decaf_backend_url)
    task_id, prediction = _prelabeled_task(ls, project, disc_video)
    assert prediction["model_version"] == version
    (track,) = [r for r in prediction["result"] if r["type"] == "videorectangle"]
    keys = {k["frame"]: k for k in track["value"]["sequence"]}
    shown = sorted(f for f in visible_frames(track) if f in keys and keys[f]["enabled"])
    assert len(shown) >= 3, f"the track is visible on fewer than 3 frames: {sorted(visible_frames(track))}"
    box_colour = _label_colour(config, "videoLabels", "Object")
    # the player cannot seek to the very last frame of this short clip (it stops one before), so stay inside
    reachable = [f for f in shown if f < track["value"]["framesCount"]] or shown
    picks = sorted({reachable[0], reachable[len(reachable) // 2], reachable[-1]})

    with signed_in_session(chromium, ls, "video_track") as ui:
        ui.open_task(project, task_id, ready=".lsf-frames-control")
        ui.page.wait_for_function(
            "() => { const v = document.querySelector('video'); return v && v.readyState >= 2; }"
        )
        assert ui.video_position()[1] == track["value"]["framesCount"]
        _check_prediction_tab(ui, prediction)
        for frame in picks:
            ui.video_seek(frame)
            ui.shot(f"frame{frame}")
            video = ui.video_frame_box()
            key = keys[frame]
            expected = Box2D(
                video.x + video.width * key["x"] / 100,
                video.y + video.height * key["y"] / 100,
                video.width * key["width"] / 100,
                video.height * key["height"] / 100,
            )
            drawn = [b for b in ui.video_boxes() if np.abs(hex_colour(b["stroke"]) - box_colour).max() < 1]
            assert len(drawn) == 1, (
                f"frame {frame}: expected one box in the label colour, got {ui.video_boxes()}"
            )
            b, grow = drawn[0], drawn[0]["strokeWidth"] / 2 + 1  # Konva's rectangle includes the stroke
            assert (b["x"], b["y"]) == pytest.approx((expected.x, expected.y), abs=grow), (b, expected)
            assert (b["width"], b["height"]) == pytest.approx((expected.width, expected.height), abs=2 * grow)
            pixels, origin = screenshot_region(ui.page, expected)
            coverage = stroke_coverage(pixels, origin, expected, box_colour)
            assert coverage > 0.9, (
                f"frame {frame}: the box outline is not on screen ({coverage:.0%} of its edges)"
            )


def test_opening_a_task_without_prediction_does_not_block(
    label_studio: LabelStudioServer, decaf_backend_url: str, chromium: str, disc_video: Path
) -> None:
    """The annotator opens a task nobody predicted yet: the view opens at once, no empty DecAF prediction is
    stored, and the masks are there when the task is opened again after the backend has posted them."""
    ls = label_studio
    project, config, version = _project(ls, "frames_masks.xml", decaf_backend_url)
    task_id = _import_task(ls, project, disc_video, "--format", "png")
    assert ls.api("GET", f"/api/predictions?task={task_id}") == []
    frames = _download_frames(ls, ls.api("GET", f"/api/tasks/{task_id}")["data"]["frames"])

    with signed_in_session(chromium, ls, "open_without_prediction") as ui:
        start = time.monotonic()
        ui.open_task(project, task_id)  # Label Studio calls /predict without context for this task now
        opened_s = time.monotonic() - start
        ui.shot("opened-before-prediction")
        assert opened_s < 30, f"the labeling view took {opened_s:.0f} s to open"
        tabs = ui.annotation_tabs()
        assert len(tabs) == 1, f"only the annotator's own tab before the prediction arrives, not {tabs}"
        prediction = _wait_prediction(ls, task_id)
        stored = ls.api("GET", f"/api/predictions?task={task_id}")
        assert [p["id"] for p in stored] == [prediction["id"]], "an empty prediction was stored as well"
        ui.open_task(project, task_id)
        ui.shot("reopened")
        assert prediction["model_version"] == version
        _check_prediction_tab(ui, prediction)
        masks = _masks_by_frame(prediction["result"], "mask")
        assert sorted(masks) == list(range(N))
        colour = _label_colour(config, "mask", "Object")
        _check_pages(ui, frames, masks, colour, "reopened", pages=[0, N // 2, N - 1])
