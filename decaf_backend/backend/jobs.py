"""Background prediction jobs: a context-less /predict never blocks past Label Studio's timeout.

Each task to pre-annotate becomes a job, run one at a time by a worker thread (one GPU). A /predict waits for its
jobs up to a deadline, then *settles* each one exactly once, under the queue's lock:
- finished -> its prediction goes into the /predict reply (Label Studio stores it);
- failed -> an empty prediction (the error is logged), as for any failing task;
- still running -> the reply holds no prediction for that task (Label Studio stores nothing, so no empty
  prediction hides the real one) and the job is marked *deferred*: when it finishes, the worker posts the
  prediction through Label Studio's API instead.
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


@dataclass(eq=False)
class Job:
    key: Hashable
    task_id: Any
    run: Callable[[], dict[str, Any] | None]  # None: nothing to post
    project: Any = None
    replace_ok: bool = False  # post even if the task has a prediction of this version (a new prompt)
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


class JobQueue:
    def __init__(self, deliver: Callable[[Job], None]) -> None:
        self._deliver = deliver
        self._jobs: dict[Hashable, Job] = {}  # queued, running, or finished but not settled/delivered yet
        self._queue: deque[Job] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self.delivered = 0
        self.delivery_failures = 0

    def submit(
        self,
        key: Hashable,
        task_id: Any,
        run: Callable[[], dict[str, Any] | None],
        project: Any = None,
        deferred: bool = False,
        replace_ok: bool = False,
    ) -> Job:
        """The job for `key`: the one already queued/running/unsettled, else a new one.

        `deferred=True` submits a job nobody waits for: its prediction is posted through the API (webhooks).
        """
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                job.deferred = job.deferred or deferred
                return job
            job = Job(key, task_id, run, project=project, replace_ok=replace_ok, deferred=deferred)
            self._jobs[key] = job
            self._queue.append(job)
            self._ensure_worker()
            self._wake.notify()
            return job

    def active_for_task(self, task_id: Any) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.task_id == task_id and j.state in (QUEUED, RUNNING)]

    @staticmethod
    def wait(jobs: Sequence[Job], timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        for job in jobs:
            job.finished.wait(max(0.0, deadline - time.monotonic()))

    def settle(self, job: Job) -> Settled:
        """Hand a job's outcome to exactly one /predict reply, or defer it to the worker's API post."""
        with self._lock:
            if job.state == FAILED:
                self._jobs.pop(job.key, None)
                return Settled(FAILED, error=job.error)
            if job.state == DONE and not job.deferred:
                self._jobs.pop(job.key, None)
                return Settled(DONE, job.prediction)
            job.deferred = True  # still running, or already handed to the worker's API post
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
        }

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="decaf-jobs", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._wake.wait()
                job = self._queue.popleft()
                job.state = RUNNING
            prediction, error = None, None
            try:
                prediction = job.run()
            except Exception as exc:  # one failing task must not stop the queue
                log.exception("prediction for task %s failed", job.task_id)
                error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                job.state = DONE if error is None else FAILED
                job.prediction, job.error = prediction, error
                done = job.deferred and job.state == DONE
                if done:
                    self._jobs.pop(job.key, None)
                # a deferred job may find nothing to post (a webhook's correction that changed nothing)
                deliver = done and prediction is not None
                job.finished.set()
            if deliver:
                try:
                    self._deliver(job)
                    self.delivered += 1
                except Exception:
                    self.delivery_failures += 1
                    log.exception("could not post the prediction of task %s to Label Studio", job.task_id)
                job.prediction = None
