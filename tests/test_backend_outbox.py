"""Nothing lost: predictions to post go through an on-disk outbox, retried with backoff until Label Studio accepts
them, across restarts, exactly once."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from decaf_backend.backend.outbox import Entry, Outbox
from decaf_backend.backend.results import masks_from_brush_items
from tests.backend_helpers import frames_task_in_label_studio
from tests.test_backend_server import FRAMES_CONFIG, H, N, W, _expected, _make, _predict, media  # noqa: F401


def _wait(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_outbox_retries_until_accepted_and_a_new_process_sends_what_the_last_one_left(tmp_path: Path) -> None:
    accepted: list[Entry] = []
    down = threading.Event()
    down.set()

    def post(entry: Entry) -> None:
        if down.is_set():
            raise ConnectionError("Label Studio is down")
        accepted.append(entry)

    first = Outbox(tmp_path, post, first_retry_s=0.01, max_retry_s=0.05)
    first.add(1, 7, {"result": ["r7"], "model_version": "v"})
    _wait(lambda: first.failures >= 3)  # retried, with backoff, still on disk
    first.stop()  # the process ends (killed) with the entry on disk
    assert first.pending() == 1 and accepted == []
    down.clear()
    second = Outbox(tmp_path, post, first_retry_s=0.01, max_retry_s=0.05)  # the next process starts sending
    _wait(lambda: second.pending() == 0)
    assert [(e.task_id, e.prediction["result"], e.attempts >= 3) for e in accepted] == [(7, ["r7"], True)]
    second.stop()


def test_a_deferred_prediction_posted_exactly_once_even_when_posted_again(media: Any, tmp_path: Path) -> None:  # noqa: F811
    fake, frames = media
    fake.predictions.clear()
    client, segmenter, runtime = _make(media, tmp_path, open_wait_s=0.0)
    task = {"id": 12, "data": {"frames": [f"/data/local-files/?d=frames/clip/f{i:04d}.png" for i in range(N)],
            "prompt": "the red disc"}, "predictions": []}  # fmt: skip
    assert _predict(client, [task]).get_json()["results"] == [[]]
    _wait(lambda: len(fake.predictions) == 1 and runtime.outbox.pending() == 0)
    posted = fake.predictions[0]
    np.testing.assert_array_equal(
        masks_from_brush_items(posted["result"], N, H, W).to_array(), _expected(frames, "red")
    )
    # the same entry again (a crash after Label Studio accepted it, before the entry was removed): not doubled
    runtime.outbox.add(1, 12, {k: posted[k] for k in ("result", "score", "model_version")}, replace_ok=True)
    _wait(lambda: runtime.outbox.pending() == 0)
    assert len(fake.predictions) == 1


# -- against a real Label Studio ----------------------------------------------------------------------------------


def _restart(ls: Any) -> None:
    """Start the same Label Studio again (same data dir, port and token) after `ls.stop()`."""
    from decaf_backend.labelstudio_server import _wait_healthy, ls_executable
    from decaf_backend.labelstudio_server import ls_environment as _ls_env

    port = ls.url.rsplit(":", 1)[1]
    env = _ls_env(ls.data_dir, ls.media_root, ls.username, ls.password, ls.token)
    with open(ls.log_path, "ab") as log:
        ls.process = subprocess.Popen(
            [str(ls_executable()), "start", "--internal-host", "127.0.0.1", "--port", port, "--no-browser"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ls.data_dir.parent, start_new_session=True,
        )  # fmt: skip
    ls._session = None
    _wait_healthy(ls)


@pytest.mark.labelstudio
@pytest.mark.slow
def test_label_studio_stopped_while_a_prediction_is_posted_gets_it_exactly_once(
    label_studio: Any, tmp_path: Path
) -> None:
    from decaf_backend.backend.runtime import Runtime
    from decaf_backend.backend.server import create_app
    from decaf_backend.backend.settings import Settings
    from tests.backend_helpers import ColourSegmenter, disc_and_square_frames

    ls = label_studio
    frames = disc_and_square_frames(N, H, W)
    project, task_id = frames_task_in_label_studio(ls, "outbox_fault", frames, FRAMES_CONFIG)
    settings = Settings(label_studio_url=ls.url, label_studio_api_key=ls.token, model_dir=tmp_path / "md",
                        preload=False, open_wait_s=0.0)  # fmt: skip
    segmenter = ColourSegmenter()
    released = threading.Event()
    original = segmenter.segment

    def held(video: Any, prompt: str, progress: Any = None) -> Any:
        released.wait(120)
        return original(video, prompt, progress)

    segmenter.segment = held  # type: ignore[method-assign]
    runtime = Runtime(settings, pipeline_factory=lambda s: segmenter)
    runtime.outbox.first_retry_s, runtime.outbox.max_retry_s = 0.2, 1.0
    client = create_app(runtime).test_client()
    task = ls.api("GET", f"/api/tasks/{task_id}")
    frames_ready = runtime.media.open(
        task, runtime_schema(), runtime.credentials(project)
    )  # media before the stop
    assert frames_ready.info.num_frames == N
    assert _predict(client, [task]).get_json()["results"] == [[]]  # deferred: computing
    ls.stop()  # Label Studio goes away while the prediction is being made and posted
    try:
        released.set()
        _wait(lambda: runtime.outbox.failures >= 2, 120)  # the post failed and is being retried
        runtime.outbox.stop()  # the backend restarts too: a new process finds the entry on disk
        assert runtime.outbox.pending() == 1
    finally:
        _restart(ls)
    restarted = Runtime(settings, pipeline_factory=lambda s: ColourSegmenter())
    restarted.outbox.first_retry_s = 0.2
    _wait(lambda: restarted.outbox.pending() == 0, 120)
    stored = ls.api("GET", f"/api/predictions?task={task_id}")
    assert len(stored) == 1 and stored[0]["model_version"] == settings.model_version
    np.testing.assert_array_equal(
        masks_from_brush_items(stored[0]["result"], N, H, W).to_array(), _expected(frames, "red")
    )
    # asking again posts nothing more: the task has its prediction
    restarted.outbox.add(
        project, task_id, {"result": stored[0]["result"], "model_version": settings.model_version}
    )
    _wait(lambda: restarted.outbox.pending() == 0, 60)
    assert len(ls.api("GET", f"/api/predictions?task={task_id}")) == 1
    restarted.outbox.stop()


def runtime_schema() -> Any:
    from decaf_backend.backend.schema import parse_schema

    return parse_schema(FRAMES_CONFIG)
