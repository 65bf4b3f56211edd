"""A batch lane for the Label Studio backend on the Ray runner: `submit(project_id, label_config, task)` returns a
`concurrent.futures.Future` of the task's prediction dict, computed on a Ray worker that loaded the models once.

Meant for work that would otherwise occupy the backend process's own model (a large "Retrieve predictions" batch,
or everything when `DECAF_RAY_ADDRESS` is set), so that the process stays free for corrections. The worker runs the
backend's own translation (`DecafVideoModel.predict_task`) and returns the prediction; the backend decides what to
do with it (reply, or post it as it does for its own jobs). A failed task's future raises `LaneTaskError` with the
reason after the runner's retries.

    lane = RayBatchLane(settings, address=os.environ.get("DECAF_RAY_ADDRESS") or None)
    future = lane.submit(project_id, label_config, task)
    prediction = future.result(timeout=80)
    lane.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import Any

from .runner import RayRunner, RunnerOptions, WorkerStartError

__all__ = ["LaneTaskError", "LaneWorker", "RayBatchLane"]

log = logging.getLogger(__name__)

LANE_OPTIONS = RunnerOptions(retries=1, backoff_s=2.0)


class LaneTaskError(RuntimeError):
    """A task failed on the lane (after its retries); the message says why."""


class LaneWorker:
    """One Ray worker's state: a backend Runtime whose models are loaded once."""

    def __init__(self, settings: Any, pipeline_factory: Any, device: str) -> None:
        from ..backend.runtime import Runtime, default_pipeline_factory

        # segmentations go to MODEL_DIR (shared with the server, corrections start from them); no live sessions
        settings = replace(settings, device=settings.device or device, session_cache_mb=0.0)
        self.runtime = Runtime(settings, pipeline_factory=pipeline_factory or default_pipeline_factory)
        self.runtime.pipeline()

    def predict(self, project_id: Any, label_config: str, task: Mapping[str, Any]) -> dict[str, Any]:
        from ..backend.model import DecafVideoModel

        return DecafVideoModel(project_id, label_config, self.runtime).predict_task(task)


def _predict(worker: LaneWorker, item: tuple[Any, str, Mapping[str, Any]]) -> dict[str, Any]:
    return worker.predict(*item)


class RayBatchLane:
    """Futures of predictions computed on Ray workers; one driving thread hands tasks out and settles futures.

    Args:
        settings: the backend's Settings (shipped to the workers; model paths must exist there).
        pipeline_factory: picklable `factory(settings) -> pipeline` (default: the backend's DecAF loader).
        env / init_kwargs: as for RayRunner.
        options: RunnerOptions fields (address, workers, devices, gpus_per_worker, retries, backoff_s), as for
            RayRunner; by default an embedded local Ray, one retry after 2 s.
    """

    def __init__(
        self,
        settings: Any,
        *,
        pipeline_factory: Any = None,
        env: Mapping[str, str] | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self._runner: RayRunner = RayRunner(
            partial(LaneWorker, settings, pipeline_factory),
            _predict,
            **replace(LANE_OPTIONS, **options).as_kwargs(),
            env=env,
            init_kwargs=init_kwargs,
        )
        self._futures: dict[int, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._broken: str | None = None
        self._runner.start()
        self._thread = threading.Thread(target=self._drive, name="decaf-ray-lane", daemon=True)
        self._thread.start()

    def submit(self, project_id: Any, label_config: str, task: Mapping[str, Any]) -> Future[dict[str, Any]]:
        """The task's prediction dict, once a worker has computed it (thread-safe)."""
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            if self._closed or self._broken:
                future.set_exception(LaneTaskError(self._broken or "the Ray lane is closed"))
                return future
            index = self._runner.submit((project_id, label_config, dict(task)))
            self._futures[index] = future
        self._wake.set()
        return future

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._futures)

    def close(self) -> None:
        """Stop the workers; unfinished futures fail."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout=60)
        self._runner.close()
        self._fail_all("the Ray lane was closed")

    def _drive(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                idle = not self._futures
            if idle:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                results = self._runner.poll(timeout=0.5)
            except WorkerStartError as exc:
                log.error("the Ray lane has no worker: %s", exc)
                with self._lock:
                    self._broken = str(exc)
                self._fail_all(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the lane must not die silently with futures pending
                log.exception("the Ray lane failed")
                with self._lock:
                    self._broken = f"{type(exc).__name__}: {exc}"
                self._fail_all(self._broken)
                return
            for result in results:
                with self._lock:
                    future = self._futures.pop(result.index, None)
                if future is None:
                    continue
                if result.ok:
                    future.set_result(result.value)
                else:
                    future.set_exception(LaneTaskError(result.error))

    def _fail_all(self, why: str) -> None:
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            if not future.done():
                future.set_exception(LaneTaskError(why))
