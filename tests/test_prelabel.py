"""`python -m decaf_backend prelabel` against a real Label Studio 1.23.2, on a local Ray with 2 CPU workers and the
tiny random models: one prediction per good task, equal to the single-process result; the broken task reported and
left without one; a run SIGKILLed after its first predictions and started again leaves exactly one per good task.
The command runs as a subprocess, as a user runs it (and so that it can be killed)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from decaf_backend.cli import main as cli_main
from decaf_backend.scale.prelabel import PrelabelError, parse_task_ids, select_tasks
from tests.conftest import encode_video, moving_disc_frames
from tests.ls_server import LabelStudioServer

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "label_config" / "frames_masks.xml"
N, H, W, GOOD = 4, 32, 48, 7  # frames per clip, size, good tasks (plus one broken)
RUN_TIMEOUT_S = 900


# fast checks of the command's input handling ----------------------------------------------------------------
def test_task_selection() -> None:
    assert parse_task_ids("3,1, 5-7") == [3, 1, 5, 6, 7]
    with pytest.raises(PrelabelError, match="ids like"):
        parse_task_ids("3,a")
    assert select_tasks([1, 2, 3], None, 9) == [1, 2, 3]
    assert select_tasks([1, 2, 3], [3, 1, 3], 9) == [1, 3]
    with pytest.raises(PrelabelError, match="project 9 has no task 4, 8"):
        select_tasks([1, 2, 3], [8, 1, 4], 9)


def test_unreachable_label_studio_is_bad_input(capsys: pytest.CaptureFixture) -> None:
    args = ["prelabel", "--url", "http://127.0.0.1:9", "--api-key", "k", "--project", "1"]
    assert cli_main(args) == 2
    assert "cannot reach Label Studio at http://127.0.0.1:9" in capsys.readouterr().err


# end to end ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("prelabel_clips")
    frames = moving_disc_frames(N, H, W)
    rng = np.random.default_rng(1)
    # each clip its own: shifted and noised, so a prediction posted to the wrong task would not match
    return [
        encode_video(folder / f"clip{i}.mp4", np.roll(frames, 3 * i, axis=2) ^ rng.integers(0, 8, frames.shape, dtype=np.uint8), fps=4)
        for i in range(GOOD)
    ]  # fmt: skip


def _project(ls: LabelStudioServer, clips: list[Path]) -> tuple[int, list[int], int]:
    """A frame-sequence project: the clips (some uploaded, some in the local-files root) and one broken task."""
    project = ls.api("POST", "/api/projects", json={"title": "prelabel", "label_config": CONFIG.read_text()})[
        "id"
    ]
    base = ["import-videos", "--url", ls.url, "--api-key", ls.token, "--project", str(project)]
    base += ["--prompt", "the red disc"]
    half = len(clips) // 2
    assert cli_main([*base, *map(str, clips[:half])]) == 0
    assert cli_main([*base, "--local-root", str(ls.media_root), *map(str, clips[half:])]) == 0
    good = sorted(t["id"] for t in ls.api("GET", f"/api/tasks?project={project}&page_size=100")["tasks"])
    broken = {"frames": ["/data/local-files/?d=nowhere/missing.png"], "prompt": "the red disc"}
    (bad,) = ls.api("POST", f"/api/projects/{project}/import?return_task_ids=true", json=[broken])["task_ids"]
    assert len(good) == GOOD
    return project, good, bad


@pytest.fixture(scope="module")
def run_env(tiny_models: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    ray_tmp = tempfile.mkdtemp(prefix="dray")  # short: Ray's socket paths live under it
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        DECAF_MLLM=str(tiny_models["qwen2_5_vl"]),
        DECAF_SAM2=str(tiny_models["sam2"]),
        DECAF_DEVICE="cpu",
        MODEL_DIR=str(tmp_path_factory.mktemp("prelabel_model_dir")),
        RAY_TMPDIR=ray_tmp,
        RAY_ADDRESS="",
    )
    env.pop("LABEL_STUDIO_API_KEY", None)
    env.pop("DECAF_RAY_ADDRESS", None)
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _command(ls: LabelStudioServer, project: int) -> list[str]:
    return [sys.executable, "-m", "decaf_backend", "prelabel", "--url", ls.url, "--api-key", ls.token,
            "--project", str(project), "--workers", "2", "--retries", "1", "--retry-backoff", "0.2"]  # fmt: skip


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # its own process group: the driver and the Ray it starts
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        code = process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        _kill_group(process)
    return code, log.read_text(errors="replace")


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, name) of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            found[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), name)
    return found


def _ray_workers(driver: int) -> set[int]:
    """The Ray worker processes under `driver` (they run in sessions of their own, under its raylet)."""
    procs, below, grew = _processes(), {driver}, True
    while grew:
        more = {pid for pid, (parent, _) in procs.items() if parent in below} - below
        below |= more
        grew = bool(more)
    return {pid for pid in below if procs[pid][1].startswith("ray::_Worker")}


def _ours(ls: LabelStudioServer, task_id: int, version: str) -> list[dict]:
    return [p for p in ls.api("GET", f"/api/predictions?task={task_id}") if p["model_version"] == version]


def _version(env: dict[str, str]) -> str:
    from decaf_backend.backend.settings import Settings

    return Settings.from_env(env).model_version


def _masks(prediction: dict) -> np.ndarray:
    from decaf_backend.backend.results import masks_from_brush_items

    return masks_from_brush_items(_brushes(prediction), N, H, W).to_array()


def _brushes(prediction: dict) -> list[dict]:
    """The mask items of a prediction (it also carries the review text)."""
    return [item for item in prediction["result"] if item["type"] == "brushlabels"]


def _single_process(
    ls: LabelStudioServer, project: int, task_ids: list[int], env: dict, model_dir: Path
) -> dict:
    """What one process computes for each task with the backend's own translation (own MODEL_DIR: no sharing)."""
    import torch

    from decaf_backend.backend.model import DecafVideoModel
    from decaf_backend.backend.runtime import Runtime
    from decaf_backend.backend.settings import Settings

    settings = Settings.from_env(
        env, label_studio_url=ls.url, label_studio_api_key=ls.token, model_dir=model_dir
    )
    model = DecafVideoModel(project, CONFIG.read_text(), Runtime(settings))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray CPU worker on this machine (OMP_NUM_THREADS = its one CPU)
    try:
        return {tid: model.predict_task(ls.api("GET", f"/api/tasks/{tid}")) for tid in task_ids}
    finally:
        torch.set_num_threads(threads)


class TestOnRealLabelStudioAndRay:
    pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

    def test_prelabel_a_project_on_two_ray_workers(
        self, label_studio: LabelStudioServer, clips: list[Path], run_env: dict, tmp_path: Path
    ) -> None:
        ls, version = label_studio, _version(run_env)
        project, good, bad = _project(ls, clips)
        assert cli_main(["prelabel", "--url", ls.url, "--api-key", ls.token, "--project", "999999"]) == 2
        assert cli_main(["prelabel", "--url", ls.url, "--api-key", ls.token, "--project", str(project),
                         "--tasks", f"{good[0]},999999"]) == 2  # fmt: skip

        code, out = _finish(
            _start(_command(ls, project), run_env, tmp_path / "run.log"), tmp_path / "run.log"
        )
        assert code == 1, out  # some task failed
        assert f"{GOOD} pre-labeled, 0 skipped" in out and "1 failed, of 8 tasks" in out, out
        missing = rf"task {bad} failed: MediaError: task {bad}: cannot download \S*/data/local-files/\?d=nowhere/missing\.png"
        assert re.search(missing, out), out
        assert "prelabel: 100%" in out and ("task/s" in out or "s/task" in out)  # progress: done/total, rate
        assert _ours(ls, bad, version) == []
        reference = _single_process(ls, project, good, run_env, tmp_path / "reference_model_dir")
        for tid in good:
            (stored,) = _ours(ls, tid, version)
            assert [item["item_index"] for item in _brushes(stored)] == list(range(N))
            np.testing.assert_array_equal(_masks(stored), _masks(reference[tid]), err_msg=f"task {tid}")

        # run again: nothing to do but the broken task, which fails again
        code, out = _finish(
            _start(_command(ls, project), run_env, tmp_path / "again.log"), tmp_path / "again.log"
        )
        assert code == 1 and f"0 pre-labeled, {GOOD} skipped" in out, out
        assert all(len(_ours(ls, tid, version)) == 1 for tid in good)

    def test_prelabel_killed_and_run_again_leaves_one_prediction_per_task(
        self, label_studio: LabelStudioServer, clips: list[Path], run_env: dict, tmp_path: Path
    ) -> None:
        ls, version = label_studio, _version(run_env)
        project, good, bad = _project(ls, clips)
        command = _command(ls, project)

        first = _start(command, run_env, tmp_path / "killed.log")
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while time.monotonic() < deadline and first.poll() is None:
                if sum(len(_ours(ls, tid, version)) for tid in good) >= 1:
                    break
                time.sleep(0.2)
            assert first.poll() is None, (tmp_path / "killed.log").read_text()  # killed mid-run, not after it
            workers = _ray_workers(first.pid)
            assert len(workers) == 2
            os.kill(first.pid, signal.SIGKILL)  # the driver only: its Ray workers must not outlive it
            first.wait(timeout=60)
            deadline = time.monotonic() + 60
            while workers & set(_processes()) and time.monotonic() < deadline:
                time.sleep(0.5)
            alive = workers & set(_processes())
            for pid in alive:
                os.kill(pid, signal.SIGKILL)
            assert not alive, "Ray workers outlived the killed driver"
        finally:
            _kill_group(first)  # Ray's helper agents exit on their own within a minute; do not wait for them
        posted = sum(len(_ours(ls, tid, version)) for tid in good)
        assert 1 <= posted < GOOD

        code, out = _finish(_start(command, run_env, tmp_path / "rerun.log"), tmp_path / "rerun.log")
        assert code == 1, out
        assert f"{GOOD - posted} pre-labeled, {posted} skipped" in out, out
        assert f"task {bad} failed" in out
        assert [len(_ours(ls, tid, version)) for tid in good] == [1] * GOOD
        assert _ours(ls, bad, version) == []
