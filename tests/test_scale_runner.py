"""The Ray runner on a real local Ray (2 CPUs, small object store, private temp dir): state built once per worker,
results streamed as they complete, per-item errors with retries and backoff, dead workers replaced."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from decaf_backend.scale.runner import RayRunner, WorkerSpec, WorkerStartError, plan_workers

REPO = Path(__file__).resolve().parents[1]
BUILDS: list[int] = []  # per worker process: how often its factory ran


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="dray")  # short: Ray's socket paths live under it
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",
        num_cpus=4,  # logical: the shared two-worker runner and a one-worker runner fit side by side
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        _temp_dir=temp,
        runtime_env={"env_vars": {"PYTHONPATH": python_path}},  # workers import this test module
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


# worker-side functions (module level: pickled by reference) --------------------------------------------------
def build_state(device: str) -> dict:
    BUILDS.append(os.getpid())
    return {"pid": os.getpid(), "device": device, "builds": len(BUILDS), "tag": os.environ.get("SCALE_TAG")}


def work(state: dict, item: tuple[str, object]) -> object:
    """One worker function for every test: item = (what to do, its argument)."""
    kind, arg = item
    if kind == "double":
        return arg * 2, state["pid"], state["builds"]
    if kind == "hold":  # until the driver releases it (or a minute passes)
        deadline = time.monotonic() + 60
        while not os.path.exists(arg) and time.monotonic() < deadline:
            time.sleep(0.05)
        return "released" if os.path.exists(arg) else "never released"
    if kind == "describe":
        return {**state, "cuda_visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if kind == "always":
        raise ValueError("this item is broken")
    if kind in ("once", "die") and not os.path.exists(
        arg
    ):  # fail (or kill the worker) on the first call only
        Path(arg).touch()
        if kind == "die":
            os._exit(3)
        raise OSError("transient failure")
    return f"{kind} ok"


def broken_factory(device: str) -> None:
    raise RuntimeError("model checkpoint not found")


@pytest.fixture(scope="module")
def runner(local_ray: None) -> Iterator[RayRunner]:
    """Two CPU workers shared by the tests below (starting a worker process takes seconds)."""
    with RayRunner(
        build_state, work, workers=2, retries=2, backoff_s=0.5, env={"SCALE_TAG": "shared-root"}
    ) as started:
        yield started


# tests ------------------------------------------------------------------------------------------------------
def test_every_item_is_computed_once_on_workers_that_built_their_state_once(runner: RayRunner) -> None:
    results = list(runner.map(("double", i) for i in range(12)))
    assert len(results) == 12 and len({r.index for r in results}) == 12
    assert all(r.ok and r.attempts == 1 for r in results)
    assert sorted(r.value[0] for r in results) == [2 * i for i in range(12)]
    pids = {r.value[1] for r in results}
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids  # in the workers, not here
    assert {r.value[2] for r in results} == {1}  # each worker ran its factory exactly once


def test_results_stream_in_completion_order(runner: RayRunner, tmp_path: Path) -> None:
    """The first item is held until the driver has seen the others: results that waited for the whole batch (or
    came in input order) would never release it."""
    release = tmp_path / "release"
    seen = []
    for result in runner.map([("hold", str(release)), *[("fast", None)] * 3]):
        seen.append(result.value)
        if seen == ["fast ok"] * 3:
            release.touch()
    assert seen == ["fast ok"] * 3 + ["released"]


def test_failures_are_retried_with_backoff_and_reported_without_raising(
    runner: RayRunner, tmp_path: Path
) -> None:
    items = [("always", None), ("once", str(tmp_path / "once")), ("fine", None)]
    start = time.monotonic()
    results = {r.item[0]: r for r in runner.map(items)}
    elapsed = time.monotonic() - start
    broken = results["always"]
    assert not broken.ok and broken.value is None and broken.attempts == 3
    assert broken.error == "ValueError: this item is broken" and "Traceback" in broken.trace
    assert results["once"].ok and results["once"].value == "once ok" and results["once"].attempts == 2
    assert results["fine"].ok and results["fine"].attempts == 1
    assert elapsed >= 0.5 + 1.0  # the broken item waited 0.5 s, then 1.0 s before its retries


def test_submit_and_poll_from_a_driver_loop(runner: RayRunner) -> None:
    indices = [runner.submit(("double", i)) for i in (5, 6, 7)]
    got = {}
    deadline = time.monotonic() + 120
    while runner.pending and time.monotonic() < deadline:
        got.update({r.index: r.value[0] for r in runner.poll(timeout=0.5)})
    assert got == {indices[0]: 10, indices[1]: 12, indices[2]: 14}


def test_workers_get_their_device_and_environment_before_the_factory(runner: RayRunner) -> None:
    (result,) = runner.map([("describe", None)])
    assert result.value["tag"] == "shared-root"
    assert result.value["device"] == "cpu" and result.value["cuda_visible"] == ""  # CPU workers see no GPU


def test_a_dead_worker_fails_its_item_and_is_replaced(local_ray: None, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    with RayRunner(build_state, work, workers=1, retries=0) as alone:
        results = list(alone.map([("die", str(marker)), ("fine", None), ("fine", None)]))
    died = next(r for r in results if r.item[0] == "die")
    assert marker.exists() and not died.ok and died.error.startswith("worker died")
    assert [r.value for r in results if r.item[0] == "fine"] == ["fine ok"] * 2  # on the replacement


def test_a_dead_worker_s_item_is_retried(runner: RayRunner, tmp_path: Path) -> None:
    (result,) = runner.map([("die", str(tmp_path / "died"))])
    assert result.ok and result.attempts == 2 and result.value == "die ok"


def test_a_factory_that_fails_everywhere_stops_the_run_with_its_reason(local_ray: None) -> None:
    with RayRunner(broken_factory, work, workers=1) as failing:
        with pytest.raises(WorkerStartError, match="model checkpoint not found"):
            list(failing.map([("fine", None)]))


def test_plan_workers() -> None:
    assert plan_workers(None, None, gpus=0) == [WorkerSpec("cpu", 0.0, 1.0, {"CUDA_VISIBLE_DEVICES": ""})]
    gpu = plan_workers(None, None, gpus=3)
    assert [(w.device, w.num_gpus) for w in gpu] == [("cuda", 1.0)] * 3  # one per GPU; Ray picks which
    assert [w.device for w in plan_workers(4, None, gpus=2, cpus_per_worker=2)] == ["cpu"] * 4
    assert {w.num_cpus for w in plan_workers(4, None, gpus=2, cpus_per_worker=2)} == {2}
    shared = plan_workers(4, None, gpus=2, gpus_per_worker=0.5)
    assert [(w.device, w.num_gpus) for w in shared] == [("cuda", 0.5)] * 4
    pinned = plan_workers(3, ["0", "cuda:2"], gpus=4)
    assert [w.env["CUDA_VISIBLE_DEVICES"] for w in pinned] == ["0", "2", "0"]
    assert all(w.device == "cuda" and w.num_gpus == 0 for w in pinned)
    assert plan_workers(None, ["cpu"], gpus=1)[0].device == "cpu"
    with pytest.raises(ValueError, match="GPU id"):
        plan_workers(None, ["gpu0"], gpus=1)
    with pytest.raises(ValueError, match="at least 1"):
        plan_workers(0, None, gpus=0)


# the backend's batch lane on the runner ---------------------------------------------------------------------
def colour_pipeline(settings: object) -> object:
    from tests.backend_helpers import ColourSegmenter

    return ColourSegmenter()  # segment/refine by colour: no models to load in the worker


def test_backend_lane_returns_the_backend_s_prediction_as_a_future(local_ray: None, tmp_path: Path) -> None:
    from decaf_backend.backend.model import DecafVideoModel
    from decaf_backend.backend.runtime import Runtime
    from decaf_backend.backend.settings import Settings
    from decaf_backend.scale.backend_lane import LaneTaskError, RayBatchLane
    from tests.backend_helpers import FakeLabelStudio, disc_and_square_frames, write_frames

    names = write_frames(tmp_path / "frames" / "clip", disc_and_square_frames())
    config = (REPO / "label_config" / "frames_masks.xml").read_text()
    good = {"id": 1, "data": {"frames": [f"/data/local-files/?d=frames/clip/{n}" for n in names], "prompt": "the red disc"}}  # fmt: skip
    bad = {"id": 2, "data": {"frames": ["/data/local-files/?d=frames/none.png"], "prompt": "the red disc"}}
    fake = FakeLabelStudio(tmp_path)  # serves the frames, token-checked, like Label Studio
    try:
        settings = Settings(
            label_studio_url=fake.url, label_studio_api_key=fake.token, model_dir=tmp_path / "lane"
        )
        lane = RayBatchLane(settings, workers=1, retries=0, pipeline_factory=colour_pipeline)
        try:
            futures = [lane.submit(1, config, good), lane.submit(1, config, bad)]
            got = futures[0].result(timeout=300)
            with pytest.raises(LaneTaskError, match="MediaError: task 2: cannot download"):
                futures[1].result(timeout=300)
        finally:
            lane.close()
        with pytest.raises(LaneTaskError, match="closed"):
            lane.submit(1, config, good).result(timeout=1)
        here = Runtime(Settings(**{**settings.__dict__, "model_dir": tmp_path / "here"}), colour_pipeline)
        expected = DecafVideoModel(1, config, here).predict_task(good)
    finally:
        fake.close()
    assert got == expected
    assert len([r for r in got["result"] if r["type"] == "brushlabels"]) == len(names)  # one mask per frame


def test_the_backend_hands_a_large_batch_to_ray_and_corrects_from_what_the_workers_stored(
    local_ray: None, tmp_path: Path
) -> None:
    """A Retrieve-predictions batch of DECAF_RAY_BATCH_MIN tasks goes to the Ray workers (the server process never
    loads a model for it); the predictions equal an in-process run, and a click in the server process starts from
    the segmentation the workers stored in the shared MODEL_DIR."""
    from decaf_backend.backend.jobs import BATCH, REMOTE
    from decaf_backend.backend.results import masks_from_brush_items
    from decaf_backend.backend.runtime import Runtime
    from decaf_backend.backend.server import create_app
    from decaf_backend.backend.settings import Settings
    from tests.backend_helpers import FakeLabelStudio, disc_and_square_frames, write_frames
    from tests.test_backend_server import H, N, W, _click, _predict, _task

    write_frames(tmp_path / "frames" / "clip", disc_and_square_frames(N, H, W))
    fake = FakeLabelStudio(tmp_path)
    tasks = [_task(1), _task(2, prompt="the red disc, again")]
    common = {"label_studio_url": fake.url, "label_studio_api_key": fake.token, "preload": False}
    waits = {"open_wait_s": 120.0, "batch_wait_s": 120.0, "interactive_wait_s": 120.0}
    try:
        settings = Settings(model_dir=tmp_path / "ray", ray_workers=2, ray_batch_min=2, **common, **waits)
        runtime = Runtime(settings, pipeline_factory=colour_pipeline)
        assert runtime.batch_lane(1) == BATCH and runtime.batch_lane(2) == REMOTE
        try:
            client = create_app(runtime).test_client()
            remote = _predict(client, tasks).get_json()["results"]
            assert not runtime.pipeline_loaded  # the batch ran in the workers, not here
            corrected = _predict(client, [_task(1)], context={"result": [_click(5, 5, 2, positive=False)]})
            assert corrected.status_code == 200 and runtime.pipeline_loaded
        finally:
            runtime.close()
        here = Runtime(Settings(model_dir=tmp_path / "here", **common, **waits), colour_pipeline)
        local = _predict(create_app(here).test_client(), tasks).get_json()["results"]
    finally:
        fake.close()
    assert len(remote) == 2 and remote == local
    # the click went to the stored segmentation of task 1: every frame answered, at the video's size
    items = [r for r in corrected.get_json()["results"][0]["result"] if r.get("type") == "brushlabels"]
    assert masks_from_brush_items(items, N, H, W).num_frames == N
