"""Corrections follow what the annotator sees, in a real browser (headless Chromium + Playwright, real Label Studio
1.23.2, `python -m decaf_backend serve` with tiny random models): click, undo, click again; the suggestion shown
follows the clicks the page still holds, and equals what the backend answers for exactly those clicks.

Random weights make the masks arbitrary but deterministic: every check compares the browser's request and the
drawn suggestion with the backend's own answer for the same clicks, asked directly (a fresh request, no history).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.browser_helpers import label_group_index, signed_in_session
from tests.ls_server import LabelStudioServer
from tests.test_browser import (  # noqa: F401  (fixtures)
    H,
    N,
    W,
    _check_pages,
    _check_suggestion,
    _download_frames,
    _label_colour,
    _prelabeled_task,
    _project,
    _red_centre,
    chromium,
    decaf_backend_url,
    disc_video,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.labelstudio]


def _direct(
    backend_url: str, ls: LabelStudioServer, project: int, config: str, task_id: int, items: list
) -> Any:
    """The backend's answer for exactly these context items, asked directly (as Label Studio would)."""
    task = ls.api("GET", f"/api/tasks/{task_id}")
    body = {
        "tasks": [task],
        "project": f"{project}.0",
        "label_config": config,
        "params": {"context": {"result": items}},
    }
    reply = requests.post(backend_url + "/predict", json=body, timeout=300)
    assert reply.status_code == 200, reply.text[:500]
    return reply.json()["results"][0]["result"]


def _masks(items: list) -> dict[int, np.ndarray]:
    from decaf_backend.backend.results import decode_brush

    return {i["item_index"]: decode_brush(i, H, W) for i in items if i.get("type") == "brushlabels"}


def test_click_undo_click_again_the_suggestion_follows(
    label_studio: LabelStudioServer,
    decaf_backend_url: str,  # noqa: F811
    chromium: str,  # noqa: F811
    disc_video: Path,  # noqa: F811
) -> None:
    ls = label_studio
    project, config, version = _project(ls, "frames_masks.xml", decaf_backend_url)
    task_id, _ = _prelabeled_task(ls, project, disc_video, "--format", "png")
    frames = _download_frames(ls, ls.api("GET", f"/api/tasks/{task_id}")["data"]["frames"])
    colour = _label_colour(config, "mask", "Object")
    group = label_group_index(config, "click")
    middle = N // 2
    x, y = _red_centre(frames[middle])

    with signed_in_session(chromium, ls, "corrections_undo") as ui:
        ui.open_task(project, task_id)
        ui.ready_for_clicks(middle)
        ui.pick_smart_keypoint()
        first = ui.smart_click(100 * x / W, 100 * y / H, "Object", group=group)
        ui.shot("first-click")
        _check_suggestion(first, version)
        (sent_first,) = first.request["context"]["result"]

        ui.page.keyboard.press("Control+z")  # undo: the keypoint goes away
        ui.settle(1.0)
        ui.shot("undone")

        # click again elsewhere on the frame: the request carries only what the page still holds
        second = ui.smart_click(100 * (W - 6) / W, 100 * 6 / H, "Object", group=group, negative=True)
        ui.shot("second-click")
        sent = second.request["context"]["result"]
        assert all(i["id"] != sent_first["id"] for i in sent), "the undone click was sent again"
        shown = _check_suggestion(second, version)
        direct = _masks(_direct(decaf_backend_url, ls, project, config, task_id, sent))
        for k in range(N):  # the answer depends on these clicks only, not on the undone one
            np.testing.assert_array_equal(shown[k], direct[k], err_msg=f"frame {k}")
        # accepted, the page shows that suggestion on the clicked frame
        ui.accept_suggestions()
        ui.set_regions_hidden(False)
        ui.shot("accepted")
        _check_pages(ui, frames, shown, colour, "accepted", pages=[middle])
