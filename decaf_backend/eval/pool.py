"""Segmenting many expressions: in this process, or spread over worker processes (one GPU each).

Yields `(expression, payload, error)` as each finishes, so the caller scores and caches results while the
others still run; an error belongs to its expression only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from .datasets import Expression
from .segmenters import Segmenter, SegmentPayload, run_segmenter

Outcome = tuple[Expression, SegmentPayload | None, Exception | None]

_WORKER: dict[str, Any] = {}


def _init_worker(factory: Callable[[], Segmenter], devices: Any) -> None:
    device = devices.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)  # before torch is imported in this process
    _WORKER["factory"] = factory


def _worker_segment(expr: Expression) -> SegmentPayload:
    if "segmenter" not in _WORKER:  # models load once per worker, on its first expression
        _WORKER["segmenter"] = _WORKER["factory"]()
    return run_segmenter(_WORKER["segmenter"], expr)


def default_devices(workers: int) -> list[str]:
    """GPU ids for `workers` processes: the parent's CUDA_VISIBLE_DEVICES entries, else 0..workers-1."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return [visible[i % len(visible)] if visible else str(i) for i in range(workers)]


def segment_in_process(pending: Sequence[Expression], segmenter: Segmenter) -> Iterator[Outcome]:
    for expr in pending:
        try:
            yield expr, run_segmenter(segmenter, expr), None
        except Exception as exc:  # noqa: BLE001 - one bad expression must not stop the benchmark
            yield expr, None, exc


def segment_with_workers(
    pending: Sequence[Expression],
    factory: Callable[[], Segmenter],
    workers: int,
    devices: Sequence[str] | None = None,
) -> Iterator[Outcome]:
    """`workers` spawned processes, each loading the segmenter once (`factory`) on its own device."""
    import multiprocessing as mp

    # spawn, not fork: CUDA cannot be forked, and each worker picks its GPU before importing torch
    ctx = mp.get_context("spawn")
    device_queue = ctx.Queue()
    for dev in list(devices or default_devices(workers))[:workers]:
        device_queue.put(dev)
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(factory, device_queue)
    )
    try:
        futures = {pool.submit(_worker_segment, expr): expr for expr in pending}
        for future in as_completed(futures):
            exc = future.exception()
            yield futures[future], None if exc else future.result(), exc
    finally:  # on Ctrl-C, do not start the queued expressions (finished ones are already cached)
        pool.shutdown(wait=True, cancel_futures=True)
