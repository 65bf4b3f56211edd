"""Apply a function to many items on Ray actors that each build an expensive state (the models) once.

    with RayRunner(load_models, segment_one, workers=2) as runner:
        for result in runner.map(items):          # as each item completes, in completion order
            print(result.index, result.ok, result.value if result.ok else result.error)

- `factory(device) -> state` runs once per worker (actor); `fn(state, item) -> value` runs per item in that worker.
  Both must be picklable (module-level functions, `functools.partial`, small dataclasses); they are unpickled in
  the worker after its environment (`CUDA_VISIBLE_DEVICES`, `env=`) is set, so torch sees the right GPU.
  `device` is "cuda" for a GPU worker (its GPU is the only visible one) and "cpu" for a CPU worker.
- A failing item never raises here: after `retries` more attempts, spaced by exponential backoff, it comes back
  with `error` set ("ExcType: message"). A worker that dies (OOM, a killed process) is replaced, up to
  `max_worker_restarts` times, and its item is retried. A worker whose factory fails is dropped; when no worker
  can start, `WorkerStartError` says why.
- Where: without `address`, an embedded local Ray starts (and stops with the runner): one worker per GPU, or
  `workers=N` CPU workers. `address="host:6379"` (or "auto") joins an existing cluster, which is left running.
  `devices=["0", "2"]` pins one worker per listed local GPU id ("cpu" for a CPU worker).
- Items are shipped to a worker only when it is idle (one item in flight per worker), so a long item list costs
  driver memory only; results come back by value, so keep them small (write big outputs to disk or an API).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

__all__ = ["ItemResult", "RayRunner", "RunnerOptions", "WorkerSpec", "WorkerStartError", "plan_workers"]

log = logging.getLogger(__name__)

S = TypeVar("S")  # the state a worker builds once
T = TypeVar("T")  # an item
R = TypeVar("R")  # what fn returns for an item
WAITING_NOTICE_S = 60.0  # how often to say that no worker is ready yet


class WorkerStartError(RuntimeError):
    """No worker could be started (every factory failed, or Ray could not place any worker)."""


@dataclass(frozen=True)
class ItemResult(Generic[T, R]):
    """The outcome of one item: `value` when it succeeded, else `error` from its last attempt."""

    index: int  # the item's submission number (its position in `map`'s input)
    item: T
    value: R | None = None
    error: str | None = None
    attempts: int = 1
    trace: str | None = None  # traceback of the last failure in the worker, for debugging

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class WorkerSpec:
    """Where one worker runs: `device` is what its factory gets; `env` is set before anything is unpickled."""

    device: str  # "cuda" | "cpu"
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunnerOptions:
    """Where RayRunner's workers run and how failed items are retried, for callers that pass these through
    (the RayRunner arguments of the same names; the defaults are RayRunner's)."""

    address: str | None = None
    workers: int | None = None
    devices: Sequence[str] | None = None
    gpus_per_worker: float | None = None
    retries: int = 2
    backoff_s: float = 1.0

    def as_kwargs(self) -> dict[str, Any]:
        """The options as RayRunner keyword arguments."""
        return {option.name: getattr(self, option.name) for option in fields(self)}


def plan_workers(
    workers: int | None,
    devices: Sequence[str] | None,
    gpus: float,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float | None = None,
) -> list[WorkerSpec]:
    """The workers to start. `devices` (local GPU ids or "cpu", cycled up to `workers`) wins; else `workers=N`
    CPU workers (GPU workers with `gpus_per_worker`); else one worker per GPU of the cluster, or one CPU worker."""
    if devices:
        count = workers or len(devices)
        return [_pinned(str(devices[i % len(devices)]), cpus_per_worker) for i in range(count)]
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        if gpus_per_worker:
            return [WorkerSpec("cuda", gpus_per_worker, 1.0) for _ in range(workers)]
        return [_cpu(cpus_per_worker) for _ in range(workers)]
    if gpus >= 1:
        return [WorkerSpec("cuda", 1.0, 1.0) for _ in range(int(gpus))]
    return [_cpu(cpus_per_worker)]


def _cpu(num_cpus: float) -> WorkerSpec:
    # hide the GPUs: the pipeline's automatic device choice would otherwise pick one
    return WorkerSpec("cpu", 0.0, num_cpus, {"CUDA_VISIBLE_DEVICES": ""})


def _pinned(device: str, cpus: float) -> WorkerSpec:
    if device.lower() == "cpu":
        return _cpu(cpus)
    gpu_id = device.lower().removeprefix("cuda:").removeprefix("cuda")
    if not gpu_id.isdigit():
        raise ValueError(f"a device is a GPU id (0, cuda:1) or 'cpu', not {device!r}")
    # not a Ray GPU resource: the id is chosen here, so Ray must not reassign CUDA_VISIBLE_DEVICES
    return WorkerSpec("cuda", 0.0, 1.0, {"CUDA_VISIBLE_DEVICES": gpu_id})


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Worker:
    """The actor body (made a Ray actor class in `_actor_class`): the state is built once, then fn per item."""

    def __init__(self, factory_blob: bytes, fn_blob: bytes, device: str, env: Mapping[str, str]) -> None:
        from ray import cloudpickle

        os.environ.update(env)  # before unpickling: that may import torch
        self._state: Any = None
        self._error: str | None = None
        try:
            self._fn = cloudpickle.loads(fn_blob)
            self._state = cloudpickle.loads(factory_blob)(device)
        except Exception as exc:  # noqa: BLE001 - reported by ready(), the runner drops this worker
            log.exception("worker could not start")
            self._error = describe(exc)

    def ready(self) -> str | None:
        """None when the state is built, else why not."""
        return self._error

    def apply(self, item: Any) -> tuple[bool, Any]:
        try:
            return True, self._fn(self._state, item)
        except Exception as exc:  # noqa: BLE001 - a per-item error, retried by the driver
            return False, (describe(exc), traceback.format_exc())


_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(_Worker)
    return _ACTOR_CLASS


@dataclass
class _Slot:
    """One worker position: its spec, the live actor, and how often it was replaced."""

    spec: WorkerSpec
    actor: Any = None
    restarts: int = 0
    alive: bool = False
    error: str | None = None


@dataclass
class _Attempt:
    index: int
    item: Any
    attempts: int = 0


class RayRunner(Generic[S, T, R]):
    """Runs `fn(state, item)` for many items on Ray actors whose `state = factory(device)` is built once.

    Args:
        factory: picklable `factory(device: str) -> state`, run once in each worker ("cuda" or "cpu").
        fn: picklable `fn(state, item) -> value`, run in a worker per item; raise to fail the item.
        workers: CPU workers to start (default: one per GPU, or one CPU worker when there is none).
        devices: local GPU ids ("0", "cuda:1") or "cpu", one worker each (cycled up to `workers`).
        gpus_per_worker: with `workers`, make them GPU workers taking this share of a GPU each (e.g. 0.5).
        address: an existing Ray cluster ("host:6379", "auto", "ray://host:10001"); default: embedded local Ray.
        retries: extra attempts for a failed item; backoff_s * 2**k seconds (at most max_backoff_s) before each.
        max_worker_restarts: how often each worker may be replaced after it died.
        env: environment variables set in every worker before the factory runs (e.g. a shared media root).
        init_kwargs: extra `ray.init` arguments for the embedded Ray (object_store_memory, _temp_dir, ...).
        start_timeout_s: give up when no worker is ready after this long (None: wait, e.g. for an autoscaler).
    """

    def __init__(
        self,
        factory: Callable[[str], S],
        fn: Callable[[S, T], R],
        *,
        workers: int | None = None,
        devices: Sequence[str] | None = None,
        gpus_per_worker: float | None = None,
        address: str | None = None,
        retries: int = 2,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        max_worker_restarts: int = 3,
        env: Mapping[str, str] | None = None,
        init_kwargs: Mapping[str, Any] | None = None,
        start_timeout_s: float | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.factory, self.fn = factory, fn
        self.workers, self.devices, self.gpus_per_worker = workers, devices, gpus_per_worker
        self.address = address
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.max_worker_restarts = max_worker_restarts
        self.env = dict(env or {})
        self.init_kwargs = dict(init_kwargs or {})
        self.start_timeout_s = start_timeout_s
        self.specs: list[WorkerSpec] = []
        self._slots: list[_Slot] = []
        self._owns_ray = False
        self._started_at = self._warned_at = 0.0
        self._blobs: tuple[bytes, bytes] | None = None
        self._lock = threading.Lock()
        self._queue: deque[_Attempt] = deque()  # ready to run
        self._delayed: list[tuple[float, int, _Attempt]] = []  # (due, tiebreak, attempt): retries in backoff
        self._tiebreak = itertools.count()
        self._tickets = itertools.count()
        self._starting: dict[Any, _Slot] = {}  # ready() ref -> slot
        self._running: dict[Any, tuple[_Slot, _Attempt]] = {}  # apply() ref -> (slot, attempt)
        self._idle: deque[_Slot] = deque()

    # lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> RayRunner[S, T, R]:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> list[WorkerSpec]:
        """Connect to (or start) Ray and start the workers; their models load in the background."""
        if self._slots:
            return self.specs
        import ray
        from ray import cloudpickle

        if not ray.is_initialized():
            ray.init(**self._init_args())
            self._owns_ray = self.address is None
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        self.specs = plan_workers(
            self.workers, self.devices, gpus, self._cpus_per_worker(), self.gpus_per_worker
        )
        self._warned_at = time.monotonic()
        self._blobs = (cloudpickle.dumps(self.factory), cloudpickle.dumps(self.fn))
        self._slots = [_Slot(spec) for spec in self.specs]
        self._started_at = time.monotonic()
        for slot in self._slots:
            self._launch(slot)
        log.info("ray runner: %d workers (%s)", len(self._slots), ", ".join(s.device for s in self.specs))
        return self.specs

    def _init_args(self) -> dict[str, Any]:
        if self.address is not None:
            return {"address": self.address, "log_to_driver": True}
        wanted = len(self.devices or ()) or self.workers or 1
        args: dict[str, Any] = {
            "address": "local",  # never join another local cluster by accident (RAY_ADDRESS, ray start)
            "num_cpus": max(os.cpu_count() or 1, wanted),
            "include_dashboard": False,
        }
        args.update(self.init_kwargs)
        return args

    def _cpus_per_worker(self) -> float:
        """A Ray this runner started: share the machine's cores (Ray sets each worker's OMP_NUM_THREADS to its
        CPUs). A cluster, or a Ray someone else started: one CPU each, so that other work still fits."""
        if not self._owns_ray:
            return 1.0
        count = len(self.devices or ()) or self.workers or 1
        return float(max(1, (os.cpu_count() or 1) // count))

    def _launch(self, slot: _Slot) -> None:
        assert self._blobs is not None
        spec = slot.spec
        actor = _actor_class().options(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=0)
        slot.actor = actor.remote(*self._blobs, spec.device, {**self.env, **spec.env})
        slot.alive = True
        self._starting[slot.actor.ready.remote()] = slot

    def wait_ready(self, timeout: float | None = None) -> int:
        """Block until every worker has built its state or failed to (at most `timeout` seconds); returns how
        many are ready. Optional: `map` and `poll` use workers as they become ready."""
        import ray

        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._starting:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            done, _ = ray.wait(list(self._starting), num_returns=1, timeout=left)
            for ref in done:
                self._on_ready(ref)
        if not any(slot.alive for slot in self._slots):
            raise WorkerStartError(
                "no worker is running: " + "; ".join(sorted({s.error or "?" for s in self._slots}))
            )
        return len(self._idle) + len(self._running)

    def close(self) -> None:
        """Stop the workers (queued items are dropped) and the embedded Ray, if this runner started it."""
        import ray

        for slot in self._slots:
            if slot.actor is not None:
                try:
                    ray.kill(slot.actor)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                slot.actor, slot.alive = None, False
        self._slots, self._starting, self._running = [], {}, {}
        self._idle.clear()
        with self._lock:
            self._queue.clear()
        self._delayed = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    # work --------------------------------------------------------------------------------------------------
    def submit(self, item: T) -> int:
        """Queue one item (thread-safe); returns its index. Results come from `poll` (or `map`)."""
        with self._lock:
            index = next(self._tickets)
            self._queue.append(_Attempt(index, item))
        return index

    @property
    def pending(self) -> int:
        """Items submitted and not yet returned by `poll`."""
        with self._lock:
            queued = len(self._queue)
        return queued + len(self._delayed) + len(self._running)

    def map(self, items: Iterable[T]) -> Iterator[ItemResult[T, R]]:
        """Every item's result, as each completes (not in input order). Closing the iterator early leaves the
        remaining items queued; `close()` drops them."""
        self.start()
        for item in items:
            self.submit(item)
        while self.pending:
            yield from self.poll(timeout=1.0)

    def poll(self, timeout: float | None = 1.0) -> list[ItemResult[T, R]]:
        """Drive the work from one thread: hand queued items to idle workers, wait up to `timeout` seconds for
        completions, and return the items that are finished for good (succeeded, or out of retries)."""
        import ray

        self.start()
        self._release_due()
        self._dispatch()
        waiting = [*self._starting, *self._running]
        if not waiting:
            self._check_workers()
            if self._delayed:
                time.sleep(max(0.0, min(self._delayed[0][0] - time.monotonic(), timeout or 1.0)))
                self._release_due()
                self._dispatch()
            return []
        wait_s = timeout
        if self._delayed:
            until_due = max(0.0, self._delayed[0][0] - time.monotonic())
            wait_s = until_due if wait_s is None else min(wait_s, until_due)
        done, rest = ray.wait(waiting, num_returns=1, timeout=wait_s)
        if done and rest:  # whatever else is finished by now, without waiting
            done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        finished: list[ItemResult[T, R]] = []
        for ref in done:
            if ref in self._starting:
                self._on_ready(ref)
            else:
                result = self._on_result(ref)
                if result is not None:
                    finished.append(result)
        self._check_workers()
        self._dispatch()
        return finished

    # internals ---------------------------------------------------------------------------------------------
    def _release_due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, attempt = heapq.heappop(self._delayed)
            with self._lock:
                self._queue.append(attempt)

    def _dispatch(self) -> None:
        while self._idle:
            with self._lock:
                if not self._queue:
                    return
                attempt = self._queue.popleft()
            slot = self._idle.popleft()
            attempt.attempts += 1
            self._running[slot.actor.apply.remote(attempt.item)] = (slot, attempt)

    def _on_ready(self, ref: Any) -> None:
        import ray

        slot = self._starting.pop(ref)
        try:
            error = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the actor died while loading
            error = describe(exc)
        if error is None:
            self._idle.append(slot)
            return
        log.error("a %s worker could not start: %s", slot.spec.device, error)
        slot.error, slot.alive = error, False
        ray.kill(slot.actor)

    def _on_result(self, ref: Any) -> ItemResult[T, R] | None:
        import ray

        slot, attempt = self._running.pop(ref)
        trace = None
        try:
            ok, value = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            ok, value = False, f"worker died: {describe(exc)}"
            self._replace(slot, value)
        else:
            self._idle.append(slot)
            if not ok:
                value, trace = value
        if ok:
            return ItemResult(attempt.index, attempt.item, value=value, attempts=attempt.attempts)
        if attempt.attempts <= self.retries:
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt.attempts - 1))
            log.info("item %d failed (%s); retry %d in %.1f s", attempt.index, value, attempt.attempts, delay)
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._tiebreak), attempt))
            return None
        return ItemResult(attempt.index, attempt.item, error=value, attempts=attempt.attempts, trace=trace)

    def _replace(self, slot: _Slot, why: str) -> None:
        import ray

        try:
            ray.kill(slot.actor)
        except Exception:  # noqa: BLE001 - already gone
            pass
        if slot.restarts >= self.max_worker_restarts:
            log.error(
                "a %s worker died %d times; not replacing it (%s)", slot.spec.device, slot.restarts + 1, why
            )
            slot.alive, slot.error = False, why
            return
        slot.restarts += 1
        log.warning("a %s worker died (%s); starting a new one", slot.spec.device, why)
        self._launch(slot)

    def _check_workers(self) -> None:
        """Raise when work is left but no worker is alive, or none became ready in time."""
        if not self.pending:
            return
        if not any(slot.alive for slot in self._slots):
            reasons = sorted({slot.error or "unknown" for slot in self._slots})
            raise WorkerStartError("no worker is running: " + "; ".join(reasons))
        if self._idle or self._running or not self._starting:
            return
        now = time.monotonic()
        if self.start_timeout_s is not None and now - self._started_at > self.start_timeout_s:
            raise WorkerStartError(
                f"no worker was ready after {self.start_timeout_s:.0f} s (does the cluster have the "
                f"resources for {self.specs[0]}?)"
            )
        if (
            now - self._warned_at > WAITING_NOTICE_S
        ):  # loading big models takes minutes; a full cluster forever
            self._warned_at = now
            log.warning(
                "%d workers still starting after %.0f s (loading models, or waiting for free resources: "
                "each needs %s)",
                len(self._starting),
                now - self._started_at,
                self.specs[0],
            )
