"""Background prediction jobs: each outcome goes to exactly one place (a /predict reply or an API post)."""

from __future__ import annotations

import threading

from decaf_backend.backend.jobs import DONE, FAILED, JobQueue


def _queue() -> tuple[JobQueue, list]:
    posted: list = []
    return JobQueue(lambda job: posted.append((job.task_id, job.prediction))), posted


def test_finished_job_goes_into_the_reply_and_is_not_posted() -> None:
    queue, posted = _queue()
    job = queue.submit("k1", 1, lambda: {"result": ["r"]})
    queue.wait([job], 10)
    settled = queue.settle(job)
    assert settled.state == DONE and settled.prediction == {"result": ["r"]}
    assert posted == [] and queue.stats()["unsettled"] == 0


def test_slow_job_is_deferred_then_posted_once() -> None:
    queue, posted = _queue()
    gate = threading.Event()
    job = queue.submit("k1", 7, lambda: gate.wait(10) and {"result": ["late"]})
    queue.wait([job], 0.05)
    assert queue.settle(job).state == "deferred"  # the reply holds nothing for this task
    assert queue.active_for_task(7) == [job]
    gate.set()
    job.finished.wait(10)
    queue.submit("other", 8, lambda: {}).finished.wait(10)  # the worker has moved on: delivery is done
    assert posted == [(7, {"result": ["late"]})] and queue.stats()["delivered"] == 1
    assert queue.settle(job).state == "deferred"  # a late second settle never returns it again
    assert queue.active_for_task(7) == []


def test_same_key_joins_the_running_job_and_a_failed_job_is_run_again_on_the_next_request() -> None:
    queue, posted = _queue()
    gate = threading.Event()
    calls = []

    def boom() -> dict:
        calls.append(1)
        gate.wait(10)
        raise ValueError("broken media")

    first = queue.submit("k", 3, boom)
    assert queue.submit("k", 3, boom) is first
    queue.wait([first], 0.05)
    assert queue.settle(first).state == "deferred"
    gate.set()
    first.finished.wait(10)
    assert (
        first.state == FAILED and "ValueError: broken media" in first.error and queue.stats()["failures"] == 1
    )
    again = queue.submit("k", 3, boom)  # the failed job was forgotten: the next request runs it again
    assert again is not first
    again.finished.wait(10)
    settled = queue.settle(again)  # one a request waits for is reported to it (no prediction), then forgotten
    assert settled.state == FAILED and "broken media" in settled.error
    assert posted == [] and calls == [1, 1]
    assert queue.submit("k", 3, lambda: {"result": []}) is not again


def test_queued_jobs_of_a_task_an_annotator_waits_on_go_first() -> None:
    queue, _ = _queue()
    gate, order = threading.Event(), []
    queue.submit("hold", 0, lambda: gate.wait(10) and {})
    for tid in (1, 2, 3):
        queue.submit(f"t{tid}", tid, lambda tid=tid: order.append(tid) or {})
    queue.prioritize(3)
    gate.set()
    queue.wait(queue.active_for_task(2), 10)
    assert order == [3, 1, 2]


def test_delivery_failure_is_counted_and_the_queue_keeps_working() -> None:
    def deliver(job: object) -> None:
        raise ConnectionError("Label Studio is down")

    queue = JobQueue(deliver)
    gate = threading.Event()
    job = queue.submit("a", 1, lambda: gate.wait(10) and {"result": []})
    queue.settle(job)
    gate.set()
    job.finished.wait(10)
    nxt = queue.submit("b", 2, lambda: {"result": ["ok"]})
    queue.wait([nxt], 10)
    assert queue.settle(nxt).prediction == {"result": ["ok"]}
    assert queue.stats()["delivery_failures"] == 1


def test_out_of_memory_on_one_task_is_reported_and_the_next_task_runs() -> None:
    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name; no GPU needed to raise it
        pass

    def oom() -> dict:
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    failed: list = []
    queue = JobQueue(lambda job: None, on_failure=lambda job, exc: failed.append((job.task_id, job.error)))
    bad = queue.submit("a", 1, oom)
    good = queue.submit("b", 2, lambda: {"result": ["ok"]})
    queue.wait([bad, good], 120)  # the first torch import (to free the GPU cache) can be slow
    assert queue.settle(bad).error.startswith("GPU out of memory: CUDA out of memory")
    assert queue.settle(good).prediction == {"result": ["ok"]}
    assert failed == [(1, bad.error)]
