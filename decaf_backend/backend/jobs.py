"""Background jobs in two lanes: a context-less /predict never blocks past Label Studio's timeout.

Each task to pre-annotate becomes a job of the *batch* lane (one worker: one device); webhook corrections go to
the *interactive* lane's worker, so they never queue behind pre-annotation. Pre-annotation handed to Ray runs in
the *remote* lane, with one waiting thread per Ray worker (the work itself runs in the Ray workers). A /predict waits for its jobs up to a
deadline, then *settles* each one exactly once, under the queue's lock:
- finished -> its prediction goes into the /predict reply (Label Studio stores it);
- failed -> nothing for that task (Label Studio stores no prediction, so it asks again on the next open or
  retrieve), the error is logged and counted, and the job is forgotten so the next request runs it again;
- still running -> the reply holds no prediction for that task and the job is marked *deferred*: when it
  finishes, its prediction goes to the outbox (outbox.py), which posts it through Label Studio's API.
A deferred job that fails is forgotten at once (the next request re-runs it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
BATCH, INTERACTIVE, REMOTE = "batch", "interactive", "remote"


@dataclass(eq=False)
class Job:
    key: Hashable
    task_id: Any
    run: Callable[[], dict[str, Any] | None]  # None: nothing to post
    project: Any = None
    replace_ok: bool = False  # post even if the task has a prediction of this version (a new prompt)
    lane: str = BATCH
    state: str = QUEUED
    prediction: dict[str, Any] | None = None
    error: str | None = None
    deferred: bool = False
    submitted: float = field(default_factory=time.monotonic)
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Settled:
    state: str  # DONE | FAILED | "deferred"
    prediction: dict[str, Any] | None = None
    error: str | None = None


def describe_error(exc: BaseException) -> str:
    """A one-line reason; GPU out-of-memory is named as such (and the allocator's cache is released)."""
    if type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower():
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # releasing the cache is best effort
            pass
        return f"GPU out of memory: {exc}"
    return f"{type(exc).__name__}: {exc}"


class JobQueue:
    def __init__(
        self,
        deliver: Callable[[Job], None],
        on_failure: Callable[[Job, BaseException], None] | None = None,
        concurrency: dict[str, int] | None = None,
    ) -> None:
        self._deliver = deliver
        self._concurrency = {BATCH: 1, INTERACTIVE: 1, REMOTE: 1, **(concurrency or {})}
        self._on_failure = on_failure
        self._jobs: dict[Hashable, Job] = {}  # queued, running, or finished but not settled/delivered yet
        self._queues: dict[str, deque[Job]] = {BATCH: deque(), INTERACTIVE: deque(), REMOTE: deque()}
        self._lock = threading.Lock()
        self._wake = {lane: threading.Condition(self._lock) for lane in self._queues}
        self._workers: dict[str, list[threading.Thread]] = {lane: [] for lane in self._queues}
        self.delivered = 0
        self.delivery_failures = 0
        self.failures = 0

    def submit(
        self,
        key: Hashable,
        task_id: Any,
        run: Callable[[], dict[str, Any] | None],
        project: Any = None,
        deferred: bool = False,
        replace_ok: bool = False,
        lane: str = BATCH,
    ) -> Job:
        """The job for `key`: the one already queued/running/unsettled, else a new one.

        `deferred=True` submits a job nobody waits for: its prediction is posted through the API (webhooks).
        """
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                job.deferred = job.deferred or deferred
                return job
            job = Job(key, task_id, run, project=project, replace_ok=replace_ok, deferred=deferred, lane=lane)
            self._jobs[key] = job
            self._queues[lane].append(job)
            self._ensure_worker(lane)
            self._wake[lane].notify()
            return job

    def active_for_task(self, task_id: Any, project: Any = None) -> list[Job]:
        with self._lock:
            return [
                j
                for j in self._jobs.values()
                if j.task_id == task_id and j.state in (QUEUED, RUNNING) and project in (None, j.project)
            ]

    def prioritize(self, task_id: Any) -> None:
        """Move the task's queued batch jobs to the front (an annotator is waiting on that task)."""
        with self._lock:
            queue = self._queues[BATCH]
            mine = [j for j in queue if j.task_id == task_id]
            for job in mine:
                queue.remove(job)
            queue.extendleft(reversed(mine))

    @staticmethod
    def wait(jobs: Sequence[Job], timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        for job in jobs:
            job.finished.wait(max(0.0, deadline - time.monotonic()))

    def settle(self, job: Job) -> Settled:
        """Hand a job's outcome to exactly one /predict reply, or defer it to the outbox."""
        with self._lock:
            if job.state == FAILED:
                self._jobs.pop(job.key, None)
                return Settled(FAILED, error=job.error)
            if job.state == DONE and not job.deferred:
                self._jobs.pop(job.key, None)
                return Settled(DONE, job.prediction)
            job.deferred = True  # still running, or already handed to the outbox
            return Settled("deferred")

    def stats(self) -> dict[str, int]:
        with self._lock:
            states = [j.state for j in self._jobs.values()]
        return {
            "queued": states.count(QUEUED),
            "running": states.count(RUNNING),
            "unsettled": states.count(DONE) + states.count(FAILED),
            "delivered": self.delivered,
            "delivery_failures": self.delivery_failures,
            "failures": self.failures,
        }

    def set_concurrency(self, lane: str, threads: int) -> None:
        with self._lock:
            self._concurrency[lane] = max(1, int(threads))

    def _ensure_worker(self, lane: str) -> None:
        alive = [w for w in self._workers[lane] if w.is_alive()]
        active = sum(1 for j in self._jobs.values() if j.lane == lane and j.state in (QUEUED, RUNNING))
        if len(alive) < min(self._concurrency[lane], active):  # one more thread only when jobs wait for it
            name = f"decaf-{lane}-{len(alive)}"
            worker = threading.Thread(target=self._work, args=(lane,), name=name, daemon=True)
            alive.append(worker)
            worker.start()
        self._workers[lane] = alive

    def _work(self, lane: str) -> None:
        queue = self._queues[lane]
        while True:
            with self._lock:
                while not queue:
                    self._wake[lane].wait()
                job = queue.popleft()
                job.state = RUNNING
            prediction, error, failure = None, None, None
            try:
                prediction = job.run()
            except Exception as exc:  # one failing task must not stop the queue
                log.exception("job for task %s failed", job.task_id)
                error, failure = describe_error(exc), exc
            with self._lock:
                job.state = DONE if error is None else FAILED
                job.prediction, job.error = prediction, error
                if error is not None:
                    self.failures += 1
                if job.deferred:
                    self._jobs.pop(job.key, None)  # delivered below, or failed: the next request re-runs it
                # a deferred job may find nothing to post (a webhook's correction that changed nothing)
                deliver = job.deferred and error is None and prediction is not None
                job.finished.set()
            if failure is not None and self._on_failure is not None:
                self._on_failure(job, failure)
            if deliver:
                try:
                    self._deliver(job)
                    self.delivered += 1
                except Exception:
                    self.delivery_failures += 1
                    log.exception("could not hand the prediction of task %s to the outbox", job.task_id)
                job.prediction = None
