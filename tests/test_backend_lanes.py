"""Interactive first: a correction never waits behind pre-annotation (held with events, never a wall-clock bound)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from decaf_backend.backend.jobs import RUNNING
from decaf_backend.backend.lanes import Lanes
from decaf_backend.backend.results import masks_from_brush_items
from tests.backend_helpers import colour_centre
from tests.test_backend_server import H, N, W, _click, _expected, _make, _predict, _task, media  # noqa: F401


def test_a_running_prelabel_pauses_at_its_next_stage_while_a_correction_is_in_flight() -> None:
    lanes = Lanes()
    in_correction, release, order = threading.Event(), threading.Event(), []

    def correction() -> None:
        with lanes.interactive():
            in_correction.set()
            release.wait(30)
            order.append("correction done")

    def prelabel() -> None:
        lanes.batch_checkpoint("mllm_object", 0.35)
        order.append("prelabel went on")

    first = threading.Thread(target=correction)
    first.start()
    in_correction.wait(30)
    batch = threading.Thread(target=prelabel)
    batch.start()
    batch.join(0.5)  # it must still be paused: the correction holds the lane (no order entry yet)
    assert order == [] and batch.is_alive()
    release.set()
    first.join(30)
    batch.join(30)
    assert order == ["correction done", "prelabel went on"] and lanes.batch_pauses == 1


def _held_segmenter(segmenter: Any) -> tuple[threading.Event, threading.Event]:
    """segment() of prompts naming 'green' blocks until released (the pre-annotation held running)."""
    started, release = threading.Event(), threading.Event()
    original = segmenter.segment

    def segment(video: Any, prompt: str, progress: Any = None) -> Any:
        if "green" in prompt:
            started.set()
            release.wait(60)
        return original(video, prompt, progress)

    segmenter.segment = segment
    return started, release


def _open_held(client: Any, segmenter: Any, task: dict) -> threading.Event:
    """Open `task` (a green prompt): its pre-annotation starts and is held until the returned event is set."""
    started, release = _held_segmenter(segmenter)
    try:
        assert _predict(client, [task]).get_json()["results"] == [[]]
        assert started.wait(30)  # the task's pre-annotation is running and held
    except BaseException:
        release.set()
        raise
    return release


def _serve_held(fake_and_frames: Any, tmp_path: Path, tid: int, interactive_wait_s: float) -> tuple:
    """A server (opened tasks deferred) whose task `tid` (a green prompt) is opened and its pre-annotation held:
    frames, client, segmenter, runtime, the task, and the event that releases it."""
    client, segmenter, runtime = _make(
        fake_and_frames, tmp_path, open_wait_s=0.0, interactive_wait_s=interactive_wait_s
    )
    task = _task(tid, prompt="the green square")
    return fake_and_frames[1], client, segmenter, runtime, task, _open_held(client, segmenter, task)


def _click_at(frames: np.ndarray, index: int, colour: str) -> dict:
    """A request context: one positive click at the centre of `colour` on frame `index`."""
    return {"result": [_click(*colour_centre(frames[index], colour), index)]}


def test_a_correction_on_another_task_completes_while_a_prelabel_is_held(
    media: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, frames = media
    client, segmenter, runtime = _make(media, tmp_path, open_wait_s=0.0, batch_wait_s=0.0)
    assert _predict(client, [_task(1)]).get_json()["results"] == [[]]  # deferred: red task 1 queued
    runtime.jobs.wait(runtime.jobs.active_for_task(1), 30)
    release = _open_held(client, segmenter, _task(2, prompt="the green square"))
    try:
        (job,) = runtime.jobs.active_for_task(2)
        reply = _predict(client, [_task(1)], context=_click_at(frames, 2, "green"))  # a correction on task 1
        assert reply.status_code == 200 and job.state == RUNNING  # answered while task 2 still runs
        got = masks_from_brush_items(reply.get_json()["results"][0]["result"], N, H, W).to_array()
        np.testing.assert_array_equal(got, _expected(frames, "red", "green"))
    finally:
        release.set()


def test_a_click_on_a_task_still_being_prelabeled_gets_a_clear_answer_then_its_masks(
    media: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    frames, client, segmenter, runtime, task, release = _serve_held(media, tmp_path, 3, 0.0)
    context = _click_at(frames, 1, "red")
    try:
        busy = _predict(client, [task], context=context)
        assert busy.status_code == 422 and "still being pre-labeled" in busy.get_json()["error"]
        assert segmenter.refine_calls == 0  # no correction from an empty start
    finally:
        release.set()
    runtime.jobs.wait(runtime.jobs.active_for_task(3), 30)
    fixed = _predict(client, [task], context=context).get_json()["results"][0]["result"]
    np.testing.assert_array_equal(
        masks_from_brush_items(fixed, N, H, W).to_array(), _expected(frames, "green", "red")
    )


def test_a_click_waits_for_its_own_tasks_masks_and_answers_as_soon_as_they_exist(
    media: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    frames, client, segmenter, runtime, task, release = _serve_held(media, tmp_path, 4, 60.0)
    replies: list = []
    clicker = threading.Thread(
        target=lambda: replies.append(_predict(client, [task], context=_click_at(frames, 1, "red")))
    )
    clicker.start()
    clicker.join(0.3)
    assert clicker.is_alive() and not replies  # waiting for the masks, not answering from an empty start
    release.set()
    clicker.join(60)
    (reply,) = replies
    got = masks_from_brush_items(reply.get_json()["results"][0]["result"], N, H, W).to_array()
    np.testing.assert_array_equal(got, _expected(frames, "green", "red"))
