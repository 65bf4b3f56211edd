"""The process-wide state of the backend: models (loaded once), segmentations and correction sessions, the lanes
and jobs, the outbox, Label Studio access.

Label Studio's 2.x ML backends build a new model object per request; the heavy parts therefore live here, in one
module-level singleton (`get_runtime()`), shared by every request thread. Run ONE server process (threads are fine):
sessions live in this process's memory; corrections and pre-annotation share the device (lanes.py).
Pre-annotation runs through `executor` (`predict(project, label_config, task) -> prediction dict`): in this process
by default; a Ray runner can take its place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any

from ..lru import BoundedCache
from .corrections import CorrectionSessions
from .jobs import BATCH, REMOTE, Job, JobQueue
from .lanes import Lanes
from .media import MediaFetcher
from .metrics import Metrics
from .outbox import Entry, Outbox
from .segmentations import Segmentations
from .settings import Settings, label_studio_access
from .store import SegmentationStore

log = logging.getLogger(__name__)

PipelineFactory = Callable[[Settings], Any]
APPLIED_MEMORY = 10_000  # annotations whose last applied correction is remembered


def default_pipeline_factory(settings: Settings) -> Any:
    from ..pipeline import DecafPipeline

    return DecafPipeline.from_pretrained(
        mllm=settings.mllm or None,
        sam2=settings.sam2 or None,
        device=settings.device or None,
        dtype=settings.dtype or None,
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        pipeline_factory: PipelineFactory = default_pipeline_factory,
        open_video: Callable[[Any], Any] | None = None,
    ) -> None:
        self.settings = settings
        self._factory = pipeline_factory
        self._pipeline: Any = None
        self._load_error: BaseException | None = None
        self._load_lock = threading.Lock()
        self.segment_lock = threading.Lock()  # one DecAF pass at a time (the batch lane's device share)
        budget = int(settings.session_cache_mb * 2**20)
        self.store = SegmentationStore(settings.model_dir / "segmentations", int(settings.store_mb * 2**20))
        # a tenth of the budget for masks, the rest for live SAM2 sessions (they weigh far more)
        self.segmentations = Segmentations(self.store, max(1, budget // 10))
        self.sessions = CorrectionSessions(
            budget - budget // 10, settings.session_bytes_per_frame, settings.model_dir / "answers"
        )
        self.media = MediaFetcher(settings, open_video)
        self.metrics = Metrics()
        self.lanes = Lanes()
        self.jobs = JobQueue(self._deliver, on_failure=self._job_failed)
        self.outbox = Outbox(settings.model_dir / "outbox", self._post_entry, on_failure=self._post_failed)
        self.executor: Any = LocalExecutor(self)
        self._remote: RemoteExecutor | None = None
        self._remote_lock = threading.Lock()
        self._setup_credentials: dict[Any, tuple[str, str]] = {}
        self._clients: dict[tuple[str, str], Any] = {}
        self._applied: BoundedCache[Hashable, Hashable] = BoundedCache(max_items=APPLIED_MEMORY)

    # where pre-annotation runs ------------------------------------------------------------------------------
    def batch_lane(self, tasks: int) -> str:
        """REMOTE (Ray workers) when DECAF_RAY_ADDRESS is set, or for a batch of at least DECAF_RAY_BATCH_MIN
        tasks when DECAF_RAY_WORKERS starts an embedded Ray; else BATCH (this process's model)."""
        s = self.settings
        if s.ray_address or (s.ray_workers > 0 and tasks >= max(1, s.ray_batch_min)):
            return REMOTE
        return BATCH

    def remote_executor(self) -> RemoteExecutor:
        """The Ray lane, started on first use (workers load the models once, then stay)."""
        with self._remote_lock:
            if self._remote is None:
                self._remote = RemoteExecutor(self.settings, self._factory)
                self.jobs.set_concurrency(REMOTE, self.settings.ray_workers or 4)
            return self._remote

    def close(self) -> None:
        """Stop the Ray workers, if any were started."""
        with self._remote_lock:
            remote, self._remote = self._remote, None
        if remote is not None:
            remote.close()

    # models -----------------------------------------------------------------------------------------------
    @property
    def pipeline_loaded(self) -> bool:
        return self._pipeline is not None

    def pipeline(self) -> Any:
        """The DecAF pipeline, loaded on first use (once per process; a failed load is retried next time)."""
        if self._pipeline is None:
            with self._load_lock:
                if self._pipeline is None:
                    log.info("loading the DecAF models ...")
                    try:
                        self._pipeline = self._factory(self.settings)
                    except BaseException as exc:
                        self._load_error = exc
                        raise
                    self._load_error = None
                    log.info("models loaded")
        return self._pipeline

    def preload_in_background(self) -> threading.Thread:
        def load() -> None:
            try:
                self.pipeline()
            except Exception:
                log.exception("model loading failed; requests will retry it")

        thread = threading.Thread(target=load, name="decaf-preload", daemon=True)
        thread.start()
        return thread

    @property
    def load_error(self) -> str | None:
        return None if self._load_error is None else f"{type(self._load_error).__name__}: {self._load_error}"

    # Label Studio access ---------------------------------------------------------------------------------
    def remember_setup(self, project: Any, hostname: str | None, access_token: str | None) -> None:
        """/setup carries the connecting user's token; used only when LABEL_STUDIO_URL/API_KEY are not set."""
        if hostname and access_token:
            self._setup_credentials[project] = (hostname, access_token)

    def credentials(self, project: Any) -> tuple[str, str] | None:
        """LABEL_STUDIO_URL/API_KEY win; /setup fills in only what is unset (settings.label_studio_access)."""
        return label_studio_access(self.settings, self._setup_credentials.get(project))

    def _client(self, project: Any) -> Any:
        creds = self.credentials(project)
        if creds is None:
            raise RuntimeError(
                "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not set: cannot post predictions"
            )
        if creds not in self._clients:
            from label_studio_sdk import LabelStudio

            self._clients[creds] = LabelStudio(base_url=creds[0], api_key=creds[1], timeout=60)
        return self._clients[creds]

    def post_prediction(
        self, project: Any, task_id: Any, prediction: dict[str, Any], replace_ok: bool = False
    ) -> bool:
        """Store a prediction through the API unless the task already has one of this model version (with
        `replace_ok`: unless it already has this very result, e.g. posted just before a crash)."""
        client = self._client(project)
        version = prediction.get("model_version")
        stored = [p for p in client.predictions.list(task=int(task_id)) if p.model_version == version]
        if any(not replace_ok or (p.result or []) == prediction["result"] for p in stored):
            log.info("task %s already has this %s prediction: not posting another", task_id, version)
            return False
        client.predictions.create(
            task=int(task_id),
            result=prediction["result"],
            score=prediction.get("score"),
            model_version=version,
        )
        self.metrics.inc("predictions_posted_total")
        return True

    def task_predictions(self, project: Any, task_id: Any) -> list[dict[str, Any]]:
        """The task's stored predictions (webhook bodies carry the task without them)."""
        return [
            {
                "id": p.id,
                "model_version": p.model_version,
                "created_at": str(p.created_at or ""),
                "result": p.result or [],
            }
            for p in self._client(project).predictions.list(task=int(task_id))
        ]

    def first_application(self, source: Hashable, prompts: Hashable) -> bool:
        """False when `prompts` are the ones last applied for `source` (an annotation resubmitted unchanged)."""
        if self._applied.get(source) == prompts:
            return False
        self._applied.put(source, prompts)
        return True

    def _deliver(self, job: Job) -> None:
        """A finished deferred job: its prediction goes to the on-disk outbox (posted from there)."""
        if job.prediction is not None:
            self.outbox.add(job.project, job.task_id, job.prediction, replace_ok=job.replace_ok)

    def _post_entry(self, entry: Entry) -> None:
        self.post_prediction(entry.project, entry.task_id, entry.prediction, replace_ok=entry.replace_ok)

    def _post_failed(self, entry: Entry, exc: BaseException) -> None:
        self.metrics.inc("errors_total", kind="post")

    def _job_failed(self, job: Job, exc: BaseException) -> None:
        kind = "out_of_memory" if (job.error or "").startswith("GPU out of memory") else "job"
        self.metrics.inc("errors_total", kind=kind)

    # state for /metrics and /health ---------------------------------------------------------------------
    def gauges(self) -> dict[str, float]:
        sessions, masks = self.sessions.cache.stats, self.segmentations.cache.stats
        jobs = self.jobs.stats()
        return {
            "model_loaded": float(self.pipeline_loaded),
            "session_cache_entries": sessions.entries + masks.entries,
            "session_cache_bytes": sessions.bytes + masks.bytes,
            "session_cache_budget_bytes": int(self.settings.session_cache_mb * 2**20),
            "session_cache_hits_total": sessions.hits + masks.hits,
            "session_cache_misses_total": sessions.misses + masks.misses,
            "session_cache_evictions_total": sessions.evictions + masks.evictions,
            "store_bytes": self.store.bytes,
            "store_budget_bytes": int(self.settings.store_mb * 2**20),
            "store_evictions_total": self.store.evictions,
            "outbox_pending": self.outbox.pending(),
            "outbox_sent_total": self.outbox.sent,
            "outbox_failures_total": self.outbox.failures,
            "corrections_in_flight": self.lanes.corrections_in_flight,
            "batch_pauses_total": self.lanes.batch_pauses,
            "jobs_failed_total": jobs["failures"],
            "jobs_queued": jobs["queued"],
            "jobs_running": jobs["running"],
            "jobs_unsettled": jobs["unsettled"],
            "jobs_delivered_total": jobs["delivered"],
            "jobs_delivery_failures_total": jobs["delivery_failures"],
        }


class RemoteExecutor:
    """Pre-annotation on Ray workers (decaf_backend/scale): each worker loads the models once and writes the
    segmentations to the shared MODEL_DIR, where corrections in this process start from them."""

    def __init__(self, settings: Settings, pipeline_factory: PipelineFactory) -> None:
        from ..scale.backend_lane import RayBatchLane

        self.lane = RayBatchLane(
            settings,
            address=settings.ray_address or None,
            workers=settings.ray_workers or None,
            pipeline_factory=pipeline_factory,
        )

    def predict(self, project_id: Any, label_config: str | None, task: dict[str, Any]) -> dict[str, Any]:
        return self.lane.submit(project_id, label_config or "", task).result()

    def close(self) -> None:
        self.lane.close()


class LocalExecutor:
    """Pre-annotation in this process (the batch lane's worker thread)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def predict(self, project_id: Any, label_config: str | None, task: dict[str, Any]) -> dict[str, Any]:
        from .model import DecafVideoModel

        return DecafVideoModel(project_id, label_config, runtime=self.runtime).predict_task(task)


_RUNTIME: Runtime | None = None
_RUNTIME_LOCK = threading.Lock()


def get_runtime() -> Runtime:
    """The process's Runtime, made from the environment on first use."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        if _RUNTIME is None:
            _RUNTIME = Runtime(Settings.from_env())
        return _RUNTIME


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime (the server factory and tests do this)."""
    global _RUNTIME
    with _RUNTIME_LOCK:
        _RUNTIME = runtime
