"""`python -m decaf_backend quickstart`: its clear errors (fast, no Label Studio), and one real run with the tiny
models on free ports (a subprocess, as a user starts it), checked through Label Studio's API, stopped with SIGINT
like Ctrl-C, and run a second time on the same data folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from decaf_backend.backend.results import decode_brush
from decaf_backend.cli import main as cli_main
from decaf_backend.labelstudio_server import port_is_free
from decaf_backend.quickstart import FRAMES_TITLE, TRACKS_TITLE
from tests.conftest import encode_video, moving_disc_frames
from tests.ls_fixtures import require_label_studio
from tests.ls_server import free_port, ls_venv

REPO = Path(__file__).resolve().parents[1]
N, H, W, FPS = 5, 48, 64, 10  # few frames: two tiny DecAF passes (frames and tracks) on a loaded CPU
READY_TIMEOUT_S = (
    900  # first Label Studio start (migrations) plus two tiny DecAF passes on a loaded 2-core box
)


def test_a_busy_port_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli_main(["quickstart", "--tiny", "--port", str(port), "--data-dir", str(tmp_path)])
    assert code == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err


def test_an_unreadable_video_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    code = cli_main(["quickstart", str(broken), "--tiny", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot read the video" in err and "broken.mp4" in err
    assert not (tmp_path / "data" / "label-studio").exists()  # nothing was started


def test_a_failed_label_studio_install_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LS_VENV", "/dev/null/lsvenv")  # `python -m venv` fails there at once
    code = cli_main(
        ["quickstart", "--tiny", "--port", str(free_port()), "--backend-port", str(free_port()),
         "--data-dir", str(tmp_path)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "installing Label Studio 1.23.2 into /dev/null/lsvenv failed" in err


@pytest.mark.labelstudio
@pytest.mark.slow
def test_quickstart_tiny_end_to_end(tmp_path: Path) -> None:
    require_label_studio()
    clip = encode_video(tmp_path / "disc.mp4", moving_disc_frames(N, H, W), fps=FPS)
    data_dir = tmp_path / "data"
    ports = [free_port(), free_port()]

    first = _start(clip, data_dir, ports, tmp_path / "first.log")
    try:
        state = _wait_ready(first, data_dir, tmp_path / "first.log")
        creds = json.loads((data_dir / "credentials.json").read_text())
        ls = requests.Session()
        ls.headers["Authorization"] = f"Token {creds['token']}"
        url = state["label_studio"]["url"]
        assert url == f"http://127.0.0.1:{ports[0]}"

        projects = _projects(ls, url)
        assert set(projects) == {FRAMES_TITLE, TRACKS_TITLE}
        frames_project, tracks_project = projects[FRAMES_TITLE], projects[TRACKS_TITLE]
        (task,) = _get(ls, url, "/api/tasks", project=frames_project)["tasks"]
        output = (tmp_path / "first.log").read_text()
        assert f"{url}/projects/{frames_project}/data?task={task['id']}" in output
        assert f"login {creds['username']} / {creds['password']}" in output

        (prediction,) = _get(ls, url, "/api/predictions", task=task["id"])
        assert prediction["model_version"].endswith("-random-weights")  # labelled as random-weight output
        items = [i for i in prediction["result"] if i["type"] == "brushlabels"]  # (besides the review text)
        assert [i["item_index"] for i in items] == list(range(N))  # one mask per frame
        for item in items:
            assert item["type"] == "brushlabels" and decode_brush(item, H, W).shape == (H, W)

        (track_task,) = _get(ls, url, "/api/tasks", project=tracks_project)["tasks"]
        (track_prediction,) = _get(ls, url, "/api/predictions", task=track_task["id"])
        tracks = [t for t in track_prediction["result"] if t["from_name"] == "box"]
        for track in tracks:  # random weights may leave the object nowhere: no track then
            assert track["type"] == "videorectangle" and track["value"]["framesCount"] == N

        (ml,) = _get(ls, url, "/api/ml", project=frames_project)
        assert ml["is_interactive"] and ml["url"] == state["backend"]["url"]
        click = {"original_width": W, "original_height": H, "image_rotation": 0, "item_index": N // 2,
                 "value": {"x": 40.0, "y": 50.0, "width": 0.25, "keypointlabels": ["Object"]},
                 "is_positive": True, "id": "click1", "from_name": "click", "to_name": "image",
                 "type": "keypointlabels", "origin": "manual"}  # fmt: skip
        reply = ls.post(
            f"{url}/api/ml/{ml['id']}/interactive-annotating",
            json={"task": task["id"], "context": {"result": [click]}},
            timeout=300,
        )
        assert reply.status_code == 200, reply.text
        answered = reply.json()["data"]
        assert answered["model_version"] == prediction["model_version"]
        masks = [i for i in answered["result"] if i["type"] == "brushlabels"]
        assert [i["item_index"] for i in masks] == list(range(N))
    finally:
        _stop_and_check(first, data_dir)

    # a second run reuses the data folder: same login, projects and tasks, nothing imported or predicted twice
    second = _start(clip, data_dir, ports, tmp_path / "second.log")
    try:
        _wait_ready(second, data_dir, tmp_path / "second.log")
        assert json.loads((data_dir / "credentials.json").read_text()) == creds
        assert _projects(ls, url) == projects
        assert [t["id"] for t in _get(ls, url, "/api/tasks", project=frames_project)["tasks"]] == [task["id"]]
        assert len(_get(ls, url, "/api/tasks", project=tracks_project)["tasks"]) == 1
        assert [p["id"] for p in _get(ls, url, "/api/predictions", task=task["id"])] == [prediction["id"]]
        assert len(_get(ls, url, "/api/ml", project=frames_project)) == 1
        assert "Importing" not in (tmp_path / "second.log").read_text()
    finally:
        _stop_and_check(second, data_dir)


def _start(clip: Path, data_dir: Path, ports: list[int], log: Path) -> subprocess.Popen:
    env = dict(os.environ, LS_VENV=str(ls_venv()), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "decaf_backend", "quickstart", str(clip), "--tiny", "--video-track",
               "--prompt", "the red disc", "--port", str(ports[0]), "--backend-port", str(ports[1]),
               "--data-dir", str(data_dir)]  # fmt: skip
    with open(log, "wb") as out:
        # its own session, as in a terminal: SIGINT reaches quickstart only, which must stop the servers itself
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_ready(process: subprocess.Popen, data_dir: Path, log: Path) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"quickstart exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        if (data_dir / "state.json").is_file() and "Press Ctrl-C" in log.read_text():
            return json.loads((data_dir / "state.json").read_text())
        time.sleep(1.0)
    raise AssertionError(f"quickstart not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _stop_and_check(process: subprocess.Popen, data_dir: Path) -> None:
    """SIGINT (Ctrl-C): quickstart exits 0 and leaves no process of either server behind."""
    state_path = data_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else None
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        if state is not None:
            groups = [state["label_studio"]["pgid"], state["backend"]["pgid"]]
            left = [g for g in groups if _group_alive(g)]
            for group in left:  # never leave them to the next test, even when this one fails
                os.killpg(group, signal.SIGKILL)
    assert code == 0
    assert state is not None and left == [], f"process groups left running: {left}"
    assert not state_path.exists()
    for service in ("label_studio", "backend"):
        assert port_is_free(int(state[service]["url"].rsplit(":", 1)[1]))  # nothing listens there any more


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _get(ls: requests.Session, url: str, path: str, **params: object) -> object:
    reply = ls.get(url + path, params=params, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _projects(ls: requests.Session, url: str) -> dict[str, int]:
    return {p["title"]: p["id"] for p in _get(ls, url, "/api/projects", page_size=100)["results"]}
