"""`python -m decaf_backend prelabel`: pre-label every selected task of a Label Studio project on Ray workers.

The driver lists the project's tasks and hands their ids to the workers (runner.py); each worker loads the models
once, reads the task and its media itself (Label Studio media URLs with the API key, or a shared local-files root),
computes the prediction with the backend's own translation (`DecafVideoModel.predict_task`) and posts it through
label-studio-sdk at once. Resumable: a task is skipped when it already holds a prediction of the current
`model_version`, checked again right before posting, so a run killed at any point (SIGKILL too) and started again
leaves exactly one prediction per task. A failed task gets no prediction, is retried with backoff, and is listed.
Do not run two `prelabel`s on the same project at once: the check and the post are not one transaction.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TextIO

from ..errors import DecafError
from .runner import RayRunner, RunnerOptions, WorkerStartError

__all__ = ["PrelabelError", "PrelabelJob", "PrelabelSummary", "TaskOutcome", "label_task", "prelabel"]

log = logging.getLogger(__name__)

DONE, SKIPPED = "done", "skipped"
EMBEDDED_OBJECT_STORE_BYTES = 256 * 2**20  # only task ids and small outcomes travel through Ray
PRELABEL_OPTIONS = RunnerOptions(retries=2, backoff_s=2.0)  # an embedded local Ray by default


class PrelabelError(DecafError):
    """Bad input: unreachable Label Studio, unknown project or tasks, a labeling config DecAF cannot fill,
    models that load nowhere."""


@dataclass(frozen=True)
class PrelabelJob:
    """What every worker needs (picklable): the backend settings (URL, key, models, model_version), the project."""

    settings: Any  # backend.settings.Settings
    project_id: int
    label_config: str


@dataclass(frozen=True)
class TaskOutcome:
    task_id: int
    status: str  # DONE | SKIPPED
    seconds: float = 0.0


class Prelabeler:
    """One worker's state: the backend Runtime (models loaded once) and the Label Studio translation."""

    def __init__(self, job: PrelabelJob, device: str) -> None:
        from ..backend.model import DecafVideoModel
        from ..backend.runtime import Runtime

        # a pre-labeled task is not corrected here: keep no SAM2 session alive (the masks go to MODEL_DIR)
        settings = replace(job.settings, device=job.settings.device or device, session_cache_mb=0.0)
        self.job = job
        self.runtime = Runtime(settings)
        self.runtime.pipeline()  # load now: a model that cannot load stops this worker, not a task
        self.model = DecafVideoModel(job.project_id, job.label_config, self.runtime)
        self.client = _client(settings.label_studio_url, settings.label_studio_api_key)

    @property
    def model_version(self) -> str:
        return self.runtime.settings.model_version

    def task(self, task_id: int) -> dict[str, Any]:
        """The task as Label Studio serves it (data, annotations and drafts for TextArea prompts, predictions)."""
        return self.client.tasks.get(id=str(task_id)).dict()


def label_task(worker: Prelabeler, task_id: int) -> TaskOutcome:
    """Runs in a worker: skip the task when it has a prediction of this version, else predict and post it."""
    start = time.monotonic()
    task = worker.task(task_id)
    if any(p.get("model_version") == worker.model_version for p in task.get("predictions") or []):
        return TaskOutcome(task_id, SKIPPED)
    prediction = worker.model.predict_task(task)
    posted = worker.runtime.post_prediction(worker.job.project_id, task_id, prediction)  # checks again
    return TaskOutcome(task_id, DONE if posted else SKIPPED, time.monotonic() - start)


@dataclass
class PrelabelSummary:
    total: int
    done: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)  # task id -> reason
    seconds: float = 0.0
    model_version: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def report(self) -> str:
        lines = [
            f"{len(self.done)} pre-labeled, {len(self.skipped)} skipped (already had a {self.model_version} "
            f"prediction), {len(self.failed)} failed, of {self.total} tasks in {self.seconds:.0f} s"
        ]
        lines += [f"  task {tid} failed: {reason}" for tid, reason in sorted(self.failed.items())]
        if self.failed:
            lines.append("failed tasks got no prediction: run the same command again to retry them")
        return "\n".join(lines)


def _client(url: str, api_key: str) -> Any:
    from label_studio_sdk import LabelStudio

    return LabelStudio(base_url=url, api_key=api_key, timeout=60)


def _project(client: Any, project_id: int, url: str) -> tuple[str, list[int]]:
    """The project's labeling config and task ids; PrelabelError when Label Studio says no."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        project = client.projects.get(id=project_id)
        ids = [task.id for task in client.tasks.list(project=project_id, fields="task_only", page_size=500)]
    except ApiError as exc:
        hint = {401: " (check --api-key)", 403: " (check --api-key)", 404: " (no such project)"}
        raise PrelabelError(
            f"Label Studio refused project {project_id}: HTTP {exc.status_code}{hint.get(exc.status_code, '')}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - httpx connection errors and the like
        raise PrelabelError(f"cannot reach Label Studio at {url}: {type(exc).__name__}: {exc}") from exc
    return project.label_config or "", sorted(ids)


def select_tasks(all_ids: Sequence[int], wanted: Sequence[int] | None, project_id: int) -> list[int]:
    if not wanted:
        return list(all_ids)
    missing = sorted(set(wanted) - set(all_ids))
    if missing:
        raise PrelabelError(f"project {project_id} has no task {', '.join(map(str, missing))}")
    return sorted(set(wanted))


def parse_task_ids(text: str) -> list[int]:
    """'1,2,5-7' -> [1, 2, 5, 6, 7]."""
    ids: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            first, _, last = part.partition("-")
            ids += range(int(first), int(last or first) + 1)
    except ValueError:
        raise PrelabelError(f"--tasks takes ids like 1,2,5-7, not {text!r}") from None
    return ids


def prelabel(
    url: str,
    api_key: str,
    project_id: int,
    task_ids: Sequence[int] | None = None,
    *,
    options: RunnerOptions = PRELABEL_OPTIONS,
    local_files_root: str | None = None,
    settings: Any = None,
    progress: bool = True,
    out: TextIO = sys.stdout,
    runner_factory: Callable[..., RayRunner] = RayRunner,
) -> PrelabelSummary:
    """Pre-label the selected tasks (default: all) of a project; see the module docstring."""
    from ..backend.schema import parse_schema
    from ..backend.settings import Settings

    settings = settings or Settings.from_env(label_studio_url=url, label_studio_api_key=api_key)
    label_config, all_ids = _project(_client(url, api_key), project_id, url)
    try:
        parse_schema(label_config)
    except DecafError as exc:
        raise PrelabelError(f"project {project_id}: {exc}") from exc
    selected = select_tasks(all_ids, task_ids, project_id)
    summary = PrelabelSummary(total=len(selected), model_version=settings.model_version)
    if not selected:
        print(f"project {project_id} has no tasks to pre-label", file=out)
        return summary
    env = {"LOCAL_FILES_DOCUMENT_ROOT": local_files_root} if local_files_root else {}
    job = PrelabelJob(settings, project_id, label_config)
    runner = runner_factory(
        partial(Prelabeler, job),
        label_task,
        **options.as_kwargs(),
        env=env,
        init_kwargs={"object_store_memory": EMBEDDED_OBJECT_STORE_BYTES},
    )
    start = time.monotonic()
    try:
        with runner:
            _collect(runner.map(selected), summary, progress)
    except WorkerStartError as exc:
        raise PrelabelError(f"no worker could load the models: {exc}") from exc
    summary.seconds = time.monotonic() - start
    print(summary.report(), file=out)
    return summary


def _collect(results: Iterable[Any], summary: PrelabelSummary, progress: bool) -> None:
    from tqdm import tqdm

    with tqdm(
        total=summary.total, desc="prelabel", unit="task", disable=not progress, file=sys.stderr
    ) as bar:
        for result in results:
            if not result.ok:
                summary.failed[result.item] = result.error
                log.warning(
                    "task %s failed after %d attempts: %s", result.item, result.attempts, result.error
                )
                log.debug("task %s: %s", result.item, result.trace)
            elif result.value.status == DONE:
                summary.done.append(result.item)
            else:
                summary.skipped.append(result.item)
            bar.update(1)
            bar.set_postfix(done=len(summary.done), skipped=len(summary.skipped), failed=len(summary.failed))


def register(sub: Any) -> None:
    """The `prelabel` subcommand (called from decaf_backend/cli.py)."""
    p = sub.add_parser(
        "prelabel",
        help="pre-label every task of a Label Studio project that has no prediction of this model version, on Ray",
    )
    p.add_argument("--url", required=True, help="Label Studio URL, e.g. http://localhost:8080")
    p.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="legacy token or PAT")
    p.add_argument("--project", type=int, required=True, help="project id")
    p.add_argument("--tasks", default=None, help="only these task ids, e.g. 1,2,5-9 (default: all)")
    p.add_argument(
        "--ray-address",
        default=os.environ.get("DECAF_RAY_ADDRESS") or None,
        help="an existing Ray cluster, e.g. HEAD:6379 (default: $DECAF_RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument("--workers", type=int, default=None, help="N CPU workers (default: one per GPU)")
    p.add_argument("--devices", default=None, help="local GPU ids, one worker each, e.g. 0,1,3")
    p.add_argument("--gpus-per-worker", type=float, default=None, help="with --workers: GPU share each")
    p.add_argument("--retries", type=int, default=2, help="extra attempts for a failed task (2)")
    p.add_argument("--retry-backoff", type=float, default=2.0, help="seconds before the first retry (2)")
    p.add_argument(
        "--local-files-root",
        default=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT"),
        help="Label Studio's local-files root as the workers see it (read media from disk, not over HTTP)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: Any) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per API call otherwise
    if not args.api_key:
        raise PrelabelError("--api-key (or LABEL_STUDIO_API_KEY) is required")
    if args.workers is not None and args.workers < 1:
        raise PrelabelError("--workers must be at least 1")
    summary = prelabel(
        args.url.rstrip("/"),
        args.api_key,
        args.project,
        parse_task_ids(args.tasks) if args.tasks else None,
        options=RunnerOptions(
            address=args.ray_address,
            workers=args.workers,
            devices=[d for d in args.devices.split(",") if d.strip()] if args.devices else None,
            gpus_per_worker=args.gpus_per_worker,
            retries=args.retries,
            backoff_s=args.retry_backoff,
        ),
        local_files_root=args.local_files_root,
        progress=not args.quiet,
    )
    return summary.exit_code
