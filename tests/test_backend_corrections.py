"""Corrections follow the annotator (issue 16), checked by mask content with the colour segmenter: the masks answered
depend only on the starting masks, the request's prompts and the same annotator's accepted answer; never on what
other requests added. Requests are shaped like Label Studio 1.23.2's (one task, `params.context`, the requesting
annotator's drafts)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from decaf_backend.backend.results import masks_from_brush_items
from tests.backend_helpers import colour_centre
from tests.test_backend_server import H, N, W, _click, _expected, _make, _predict, _task, media  # noqa: F401


def _masks(reply: Any) -> np.ndarray:
    assert reply.status_code == 200, reply.get_json()
    return masks_from_brush_items(reply.get_json()["results"][0]["result"], N, H, W).to_array()


def _points(frames: np.ndarray) -> dict[str, tuple[float, float]]:
    """A pixel centre inside each colour on frame 2, and one on the grey background."""
    return {
        "red": colour_centre(frames[2], "red"),
        "green": colour_centre(frames[2], "green"),
        "grey": (2.0, H - 3.0),
    }


def _opened(fake_and_frames: Any, tmp_path: Path, tid: int) -> tuple[np.ndarray, Any, Any, dict]:
    """A server on which task `tid` was opened (its starting masks made): frames, client, segmenter, _points."""
    client, segmenter, _ = _make(fake_and_frames, tmp_path)
    _predict(client, [_task(tid)])
    frames = fake_and_frames[1]
    return frames, client, segmenter, _points(frames)


def test_two_annotators_never_share_clicks_and_undo_undoes(media: Any, tmp_path: Path) -> None:  # noqa: F811
    _, frames = media
    client, segmenter, _ = _make(media, tmp_path)
    start = _predict(client, [_task(1)]).get_json()["results"][0]
    task = dict(_task(1), predictions=[dict(start, id=1)])
    p = _points(frames)
    a_green = _click(*p["green"], 2)
    b_grey = _click(*p["grey"], 2, positive=False)
    a = _masks(_predict(client, [task], context={"result": [a_green]}))
    np.testing.assert_array_equal(a, _expected(frames, "red", "green"))
    b = _masks(_predict(client, [task], context={"result": [b_grey]}))  # B's own click, A's is not in it
    fresh_client, _, _ = _make(media, tmp_path)  # a restart: the stored segmentation, no session
    fresh = _masks(_predict(fresh_client, [task], context={"result": [b_grey]}))
    np.testing.assert_array_equal(b, fresh)
    np.testing.assert_array_equal(b, _expected(frames, "red"))  # grey removed nothing red; no green
    # A undoes the green click and clicks inside the red disc: the starting masks exactly
    undone = _masks(_predict(client, [task], context={"result": [_click(*p["red"], 2)]}))
    np.testing.assert_array_equal(undone, masks_from_brush_items(start["result"], N, H, W).to_array())
    assert segmenter.segment_calls == 1


def test_incremental_clicks_continue_the_cached_state_and_equal_all_at_once(
    media: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    frames, client, segmenter, p = _opened(media, tmp_path, 2)
    clicks = [_click(*p["green"], 2), _click(*p["red"], 2, positive=False), _click(*p["grey"], 1)]
    answers = []
    for k in range(1, 4):  # Label Studio resends the pending clicks with each new one
        answers.append(_masks(_predict(client, [_task(2)], context={"result": clicks[:k]})))
    # one more click = one prompt applied to the cached state (the first continued the starting state)
    assert [len(c) + len(b) for c, b in segmenter.refine_inputs] == [1, 1, 1]
    assert segmenter.sessions_started == 0
    fresh_client, fresh, _ = _make(media, tmp_path)  # a restart: the stored segmentation, no session
    at_once = _masks(_predict(fresh_client, [_task(2)], context={"result": clicks}))
    np.testing.assert_array_equal(answers[-1], at_once)
    assert [len(c) for c, _ in fresh.refine_inputs] == [3] and fresh.sessions_started == 1
    assert fresh.segment_calls == 0
    grey = ~_expected(frames, "red") & ~_expected(frames, "green")
    np.testing.assert_array_equal(at_once, _expected(frames, "green") | grey)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "decaf_refine_runs_total 3" in metrics and "decaf_corrections_total 3" in metrics


def test_the_next_click_after_an_accepted_suggestion_starts_from_what_the_annotator_has(
    media: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    frames, client, _, p = _opened(media, tmp_path, 3)
    accepted = _predict(client, [_task(3)], context={"result": [_click(*p["green"], 2)]})
    items = accepted.get_json()["results"][0]["result"]
    # accepted: the draft (autosaved, the requesting user's only) holds the suggestion's regions; the clicks are gone
    draft = {"id": 9, "user": 1, "result": items, "created_at": "2026-01-01T00:00:00Z"}
    negative_red = {"result": [_click(*p["red"], 2, positive=False)]}
    after = _masks(_predict(client, [dict(_task(3), drafts=[draft])], context=negative_red))
    np.testing.assert_array_equal(after, _expected(frames, "green"))  # the accepted green stays
    other = _masks(_predict(client, [_task(3)], context=negative_red))  # no draft: someone else
    assert not other.any()
    # after a restart (same MODEL_DIR): the accepted answer's prompts are read back from disk
    restarted, _, _ = _make(media, tmp_path)
    again = _masks(_predict(restarted, [dict(_task(3), drafts=[draft])], context=negative_red))
    np.testing.assert_array_equal(again, _expected(frames, "green"))


def test_sessions_stay_inside_the_byte_budget(media: Any, tmp_path: Path) -> None:  # noqa: F811
    _, frames = media
    # room for about one live session (6 frames x 64 KiB estimated each)
    client, segmenter, runtime = _make(media, tmp_path, session_cache_mb=0.5, session_bytes_per_frame=1 << 16)
    p = _points(frames)
    for tid in (4, 5, 6):
        _predict(client, [_task(tid)])
        _masks(_predict(client, [_task(tid)], context={"result": [_click(*p["green"], 2)]}))
    stats = runtime.sessions.cache.stats
    assert stats.bytes <= runtime.sessions.cache.max_bytes and stats.evictions >= 2
    # an evicted session is rebuilt from the starting segmentation: same answer
    second = _masks(
        _predict(client, [_task(4)], context={"result": [_click(*p["green"], 2), _click(*p["grey"], 1)]})
    )
    grey = ~_expected(frames, "red") & ~_expected(frames, "green")
    np.testing.assert_array_equal(second, _expected(frames, "red", "green") | grey)


# -- against a real Label Studio with two annotators ---------------------------------------------------------------

_MAKE_USER = """
from organizations.models import Organization
from rest_framework.authtoken.models import Token
from users.models import User
org = Organization.objects.first()
user = User.objects.filter(email="{email}").first() or User.objects.create_user(email="{email}", password="{password}")
user.active_organization = org
user.save()
org.add_user(user)
print("TOKEN", Token.objects.get_or_create(user=user)[0].key)
"""


def _second_user(ls: Any, email: str = "b@example.com", password: str = "bpassword123") -> str:
    """A second annotator of the organization, with a legacy token (made through Django's shell)."""
    import subprocess

    from decaf_backend.labelstudio_server import _manage_py, ls_venv
    from decaf_backend.labelstudio_server import ls_environment as _ls_env

    venv = ls_venv()
    env = _ls_env(ls.data_dir, ls.media_root, ls.username, ls.password, ls.token)
    out = subprocess.run(
        [str(venv / "bin" / "python"), str(_manage_py(venv)), "shell", "-c", _MAKE_USER.format(email=email, password=password)],
        env=env, check=True, capture_output=True, text=True, cwd=ls.data_dir.parent, timeout=300,
    )  # fmt: skip
    return next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("TOKEN"))


@pytest.mark.labelstudio
@pytest.mark.slow
def test_two_annotators_through_label_studio(label_studio: Any, tmp_path: Path) -> None:
    import requests
    from werkzeug.serving import make_server

    from decaf_backend.backend.server import create_app
    from tests.backend_helpers import disc_and_square_frames, frames_task_in_label_studio
    from tests.ls_server import free_port
    from tests.test_backend_server import FRAMES_CONFIG

    ls = label_studio
    frames = disc_and_square_frames(N, H, W)
    project, task_id = frames_task_in_label_studio(ls, "two_annotators", frames, FRAMES_CONFIG)

    fake = SimpleNamespace(url=ls.url, token=ls.token)  # _make's media fixture shape, for the real server
    _, _, runtime = _make((fake, frames), tmp_path)
    server = make_server("127.0.0.1", free_port(), create_app(runtime), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        backend = f"http://127.0.0.1:{server.server_port}"
        ml = ls.api(
            "POST",
            "/api/ml",
            json={"url": backend, "project": project, "title": "decaf", "is_interactive": True},
        )
        ls.api("POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
               json={"selectedItems": {"all": True, "excluded": []}})  # fmt: skip
        (start,) = ls.api("GET", f"/api/predictions?task={task_id}")
        start_masks = masks_from_brush_items(start["result"], N, H, W).to_array()
        np.testing.assert_array_equal(start_masks, _expected(frames, "red"))
        b_token = _second_user(ls)
        b_session = requests.Session()
        b_session.headers["Authorization"] = f"Token {b_token}"

        def click(session: Any, clicks: list[dict]) -> np.ndarray:
            r = session.post(f"{ls.url}/api/ml/{ml['id']}/interactive-annotating",
                             json={"task": task_id, "context": {"result": clicks}}, timeout=120)  # fmt: skip
            assert r.status_code == 200 and "data" in r.json(), r.text[:500]
            return masks_from_brush_items(r.json()["data"]["result"], N, H, W).to_array()

        p = _points(frames)
        a_green, b_grey = _click(*p["green"], 2), _click(*p["grey"], 2, positive=False)
        np.testing.assert_array_equal(
            click(ls.session, [a_green]), _expected(frames, "red", "green")
        )  # user A
        b = click(b_session, [b_grey])  # user B: exactly what a fresh session gives for B's click alone
        fresh_client, _, _ = _make((fake, frames), tmp_path / "fresh")
        task = ls.api("GET", f"/api/tasks/{task_id}")
        fresh = _masks(_predict(fresh_client, [task], context={"result": [b_grey]}))
        np.testing.assert_array_equal(b, fresh)
        assert not (b & _expected(frames, "green")).any()  # none of A's green
        # A's request without its earlier click (undo, then a click inside the disc): the starting masks
        np.testing.assert_array_equal(click(ls.session, [_click(*p["red"], 2)]), start_masks)
        # three clicks answered incrementally == the same three at once (fresh backend)
        three = [a_green, _click(*p["red"], 2, positive=False), _click(*p["grey"], 1)]
        steps = [click(ls.session, three[:k]) for k in range(1, 4)]
        at_once = _masks(_predict(fresh_client, [task], context={"result": three}))
        np.testing.assert_array_equal(steps[-1], at_once)
        assert len(ls.api("GET", f"/api/predictions?task={task_id}")) == 1  # nothing of this was stored
    finally:
        server.shutdown()
