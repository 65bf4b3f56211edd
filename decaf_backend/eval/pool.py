"""Segmenting many expressions: in this process, or on Ray workers (the project's one scheduler,
`scale.runner.RayRunner`) that each load the segmenter once — one GPU each, or CPU workers.

Yields `(expression, payload, error)` as each finishes, so the caller scores and caches results while the
others still run; an error ("ExcType: message") belongs to its expression only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import DecafError
from .datasets import Expression
from .segmenters import Segmenter, SegmentPayload, run_segmenter

Outcome = tuple[Expression, SegmentPayload | None, str | None]


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def segment_in_process(pending: Sequence[Expression], segmenter: Segmenter) -> Iterator[Outcome]:
    for expr in pending:
        try:
            yield expr, run_segmenter(segmenter, expr), None
        except Exception as exc:  # noqa: BLE001 - one bad expression must not stop the benchmark
            yield expr, None, describe(exc)


def visible_gpu_ids() -> list[str]:
    """Ids of the GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every GPU torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def default_devices(workers: int, use_gpus: bool = True) -> list[str]:
    """One device per worker: the visible GPUs in turn, else "cpu" (CPU workers)."""
    gpus = visible_gpu_ids() if use_gpus else []
    return [gpus[i % len(gpus)] for i in range(workers)] if gpus else ["cpu"] * workers


@dataclass
class _LoadOnce:
    """A worker's state: the segmenter, built once from the picklable factory (models load here)."""

    factory: Callable[[], Segmenter]

    def __call__(self, device: str) -> Segmenter:
        return self.factory()  # the worker's GPU is already the only visible one


def _segment(segmenter: Segmenter, expr: Expression) -> SegmentPayload:
    return run_segmenter(segmenter, expr)


def segment_with_workers(
    pending: Sequence[Expression],
    factory: Callable[[], Segmenter],
    workers: int,
    devices: Sequence[str] | None = None,
    ray_init: Mapping[str, Any] | None = None,
) -> Iterator[Outcome]:
    """`workers` Ray workers on `devices` (GPU ids or "cpu", cycled; default: `default_devices`).

    A failed expression is not retried here (a rerun retries it, like every failure); a worker that dies
    is replaced and its expression reported failed. `ray_init`: extra `ray.init` arguments for the local Ray.
    """
    from ..scale.runner import RayRunner, WorkerStartError

    by_index = dict(enumerate(pending))
    runner = RayRunner(
        _LoadOnce(factory), _segment, workers=workers, devices=list(devices or default_devices(workers)),
        retries=0, init_kwargs=ray_init,
    )  # fmt: skip
    try:
        with runner:
            for result in runner.map(pending):
                yield by_index[result.index], result.value, result.error
    except WorkerStartError as exc:  # e.g. the model is missing: no worker can do anything
        raise DecafError(f"no evaluation worker could start: {exc}") from exc
