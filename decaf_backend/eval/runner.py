"""Benchmark evaluation: segment every expression, score it, cache it, aggregate the official way.

The per-expression segmentation is injected (`Segmenter`: Expression → masks), so the same runner serves
DecAF (`PipelineSegmenter`), an oracle that returns the ground truth (checks a dataset install: J&F must be
100) and tests. Results are cached per expression under `<out>/cache/`, so an interrupted run resumes where
it stopped; failures are not cached (a rerun retries them) and score 0 like in the official evaluators.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import DecafError
from ..types import FrameMasks
from .datasets import Expression, RVOSDataset, safe_relpath
from .metrics import (
    DEFAULT_BOUND_TH,
    frame_scores,
    mevis_aggregate,
    official_round,
    pooled_percent_aggregate,
    r2vos_accuracy,
    r2vos_robustness,
    revos_aggregate,
)

Segmenter = Callable[[Expression], Any]  # returns VideoSegmentation, FrameMasks, (T, H, W) array or mask list

PROTOCOLS = {
    "pooled": "DecAF eval_rvos.py: per-expression J, F in percent rounded to 2 decimals, mean over expressions",
    "mevis": "MeViS eval_mevis.py: mean per-expression J and F over expressions, J&F = (J + F) / 2",
    "revos": "ReVOS eval_revos.py: rounded percents, referring and reasoning averaged separately, overall = mean",
}


@dataclass
class ExpressionRecord:
    """What is cached and reported for one expression (j, f, a, r are fractions; None without GT)."""

    video: str
    exp_id: str
    text: str
    num_frames: int
    status: str  # "ok" (scored), "submitted" (masks written, no GT), "error"
    type_id: int | None = None
    j: float | None = None
    f: float | None = None
    a: float | None = None
    r: float | None = None
    j_frames: list[float] = field(default_factory=list)
    f_frames: list[float] = field(default_factory=list)
    object_name: str = ""
    score: float | None = None
    seconds: float = 0.0
    error: str = ""
    random_weights: bool = False  # made by tiny random-weight test models: the numbers mean nothing


@dataclass
class EvaluationReport:
    dataset: str
    split: str
    protocol: str
    records: list[ExpressionRecord]
    metrics: dict[str, Any]
    out_dir: Path
    csv_path: Path
    summary_path: Path
    submission_dir: Path | None = None
    submission_zip: Path | None = None

    @property
    def failed(self) -> list[ExpressionRecord]:
        return [r for r in self.records if r.status == "error"]


# ------------------------------------------------------------------------------------------ segmenters


@dataclass
class SegmentPayload:
    """A segmenter's answer reduced to what crosses process boundaries: compressed masks and a few facts."""

    masks: FrameMasks
    object_name: str = ""
    points: list[dict[str, Any]] = field(default_factory=list)
    score: float | None = None
    seconds: float = 0.0
    random_weights: bool = False


def to_payload(output: Any, seconds: float = 0.0) -> SegmentPayload:
    """Normalise a segmenter's answer: VideoSegmentation (its live SAM2 session is dropped), FrameMasks,
    a (T, H, W) array or a list of (H, W) masks."""
    if isinstance(getattr(output, "masks", None), FrameMasks):
        scores = getattr(output, "scores", None)
        score = scores.get("score") if isinstance(scores, dict) else None
        return SegmentPayload(
            masks=output.masks,
            object_name=str(getattr(output, "object_name", "") or ""),
            points=list(getattr(output, "points", None) or []),
            score=None if score is None else float(score),
            seconds=seconds,
            random_weights=bool(getattr(output, "random_weights", False)),
        )
    if isinstance(output, FrameMasks):
        return SegmentPayload(output, seconds=seconds)
    if isinstance(output, (np.ndarray, list, tuple)):
        arr = np.asarray(output)
        if arr.ndim != 3:
            raise DecafError(f"segmenter returned masks of shape {arr.shape}, expected (T, H, W)")
        return SegmentPayload(FrameMasks.from_array(arr), seconds=seconds)
    raise DecafError(f"segmenter returned {type(output).__name__}, not masks")


def run_segmenter(segmenter: Segmenter, expr: Expression) -> SegmentPayload:
    start = time.perf_counter()
    output = segmenter(expr)
    return to_payload(output, time.perf_counter() - start)


class OracleSegmenter:
    """Returns the ground truth itself: J&F must come out as 100 (a check of the dataset and the scoring)."""

    def __init__(self, dataset: RVOSDataset) -> None:
        self.dataset = dataset

    def __call__(self, expr: Expression) -> FrameMasks:
        return FrameMasks.from_array(np.stack([m > 0 for m in self.dataset.gt_masks(expr)]))


class PngFolderSegmenter:
    """Existing predictions instead of a model: `<root>/<video>/<exp_id>/<frame>.png`, any value > 0 is
    foreground (the layout DecAF, VISA and the MeViS tools write). A missing PNG fails the expression, which
    then scores 0 — as in the official evaluators."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def __call__(self, expr: Expression) -> FrameMasks:
        folder = self.root / safe_relpath(expr.video) / safe_relpath(expr.exp_id)
        masks = None
        for i, name in enumerate(expr.frames):
            image = cv2.imread(str(folder / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise DecafError(f"prediction {folder / name}.png missing or unreadable")
            if masks is None:
                masks = FrameMasks(len(expr.frames), image.shape[0], image.shape[1])
            masks[i] = image > 0
        if masks is None:
            raise DecafError(f"{expr.key} lists no frames")
        return masks


class PipelineSegmenter:
    """DecAF on one expression: the whole listed video and the expression text."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def __call__(self, expr: Expression) -> Any:
        return self.pipeline.segment(expr.reader(), expr.text)


@dataclass
class PipelineFactory:
    """Picklable recipe that loads DecafPipeline inside each worker process (after its GPU is chosen)."""

    mllm: str | None = None
    sam2: str | None = None
    device: str | None = None
    dtype: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Segmenter:
        from ..config import DecafConfig
        from ..pipeline import DecafPipeline

        config = DecafConfig.from_env(**self.config_overrides)
        pipeline = DecafPipeline.from_pretrained(self.mllm, self.sam2, self.device, self.dtype, config)
        return PipelineSegmenter(pipeline)


# --------------------------------------------------------------------------------------- worker processes

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


# ---------------------------------------------------------------------------------------------- runner


class EvaluationRunner:
    """Runs, scores, caches and aggregates one dataset split into `out_dir`."""

    def __init__(
        self,
        dataset: RVOSDataset,
        out_dir: str | Path,
        save_masks: bool = False,
        overlay: str | None = None,
        bound_th: float = DEFAULT_BOUND_TH,
        signature: dict[str, Any] | None = None,
        restart: bool = False,
    ) -> None:
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        self.save_masks = save_masks or not dataset.has_gt
        self.overlay = overlay
        self.bound_th = bound_th
        self.cache_dir = self.out_dir / "cache"
        self.mask_dir = self.out_dir / ("submission" if not dataset.has_gt else "predictions")
        if restart and self.out_dir.exists():
            for sub in (self.cache_dir, self.mask_dir, self.out_dir / "overlays"):
                shutil.rmtree(sub, ignore_errors=True)
        self._check_run(signature or {})

    def _check_run(self, signature: dict[str, Any]) -> None:
        """Refuse to mix cached results of another dataset, split or model into this folder."""
        run = {
            "dataset": self.dataset.name,
            "split": self.dataset.split,
            "root": str(self.dataset.root.resolve()),
        }
        run.update({k: v for k, v in signature.items() if v is not None})
        path = self.out_dir / "run.json"
        if path.is_file():
            old = json.loads(path.read_text())
            diff = {k for k in set(old) | set(run) if old.get(k) != run.get(k)}
            if diff and any(self.cache_dir.rglob("*.json")):
                raise DecafError(
                    f"{self.out_dir} holds results of another run (differs in {', '.join(sorted(diff))}); "
                    "use another --out or --restart"
                )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run, indent=1))

    # cache -------------------------------------------------------------------------------------------
    def cache_path(self, expr: Expression) -> Path:
        return self.cache_dir / safe_relpath(expr.video) / f"{safe_relpath(expr.exp_id)}.json"

    def cached(self, expr: Expression) -> ExpressionRecord | None:
        path = self.cache_path(expr)
        if not path.is_file():
            return None
        try:
            record = ExpressionRecord(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError):
            return None  # a torn or foreign file: redo the expression
        return record if record.status in ("ok", "submitted") else None

    def _store(self, expr: Expression, record: ExpressionRecord) -> None:
        path = self.cache_path(expr)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)  # atomic: an interrupted run never leaves half a record

    # one expression ----------------------------------------------------------------------------------
    def finish(self, expr: Expression, payload: SegmentPayload) -> ExpressionRecord:
        """Score (where GT exists), write masks / overlay on request, cache; returns the record."""
        masks = payload.masks
        if len(masks) != len(expr.frames):
            raise DecafError(f"{expr.key}: {len(masks)} masks for {len(expr.frames)} listed frames")
        record = ExpressionRecord(
            expr.video, expr.exp_id, expr.text, len(expr.frames), "submitted", expr.type_id,
            object_name=payload.object_name, score=payload.score, seconds=round(payload.seconds, 3),
            random_weights=payload.random_weights,
        )  # fmt: skip
        if self.save_masks:
            self._write_masks(expr, masks)
        if self.dataset.has_gt:
            self._score(expr, masks, record)
            record.status = "ok"
        if self.overlay:
            self._write_overlay(expr, payload)
        self._store(expr, record)
        return record

    def _score(self, expr: Expression, masks: FrameMasks, record: ExpressionRecord) -> None:
        fg_iter = self.dataset.foreground_masks(expr)
        a_vals, r_vals = [], []
        n = 0
        for i, gt in enumerate(self.dataset.gt_masks(expr)):
            pred = masks[i]
            if pred.shape != gt.shape:
                raise DecafError(
                    f"{expr.key} frame {expr.frames[i]}: mask {pred.shape} vs ground truth {gt.shape}"
                )
            j, f = frame_scores(gt, pred, self.bound_th)
            record.j_frames.append(j)
            record.f_frames.append(f)
            if fg_iter is not None:
                raw_pred = pred.astype(np.uint8) * 255  # the 0/255 PNG values the official tool reads
                a_vals.append(r2vos_accuracy(gt, raw_pred))
                r_vals.append(r2vos_robustness(gt, raw_pred, next(fg_iter)))
            n += 1
        if n != len(expr.frames):
            raise DecafError(f"{expr.key}: ground truth has {n} frames, the JSON lists {len(expr.frames)}")
        record.j, record.f = float(np.mean(record.j_frames)), float(np.mean(record.f_frames))
        if fg_iter is not None:
            record.a, record.r = float(np.mean(a_vals)), float(np.mean(r_vals))

    def _write_masks(self, expr: Expression, masks: FrameMasks) -> None:
        """0/255 single-channel PNG per listed frame: `<video>/<exp_id>/<frame>.png` (+ the benchmark's prefix)."""
        prefix = self.dataset.submission_prefix if not self.dataset.has_gt else ""
        folder = self.mask_dir / prefix / safe_relpath(expr.video) / safe_relpath(expr.exp_id)
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(expr.frames):
            if not cv2.imwrite(str(folder / f"{name}.png"), masks[i].astype(np.uint8) * 255):
                raise DecafError(f"cannot write {folder / name}.png")

    def _write_overlay(self, expr: Expression, payload: SegmentPayload) -> None:
        from ..overlay import write_overlay

        path = (
            self.out_dir
            / "overlays"
            / safe_relpath(expr.video)
            / f"{safe_relpath(expr.exp_id)}.{self.overlay}"
        )
        caption = expr.text + (f" → {payload.object_name}" if payload.object_name else "")
        write_overlay(path, expr.reader().iter_frames(), [payload.masks], payload.points, caption, fps=10.0)

    # the whole split ---------------------------------------------------------------------------------
    def run(
        self,
        segmenter: Segmenter | None = None,
        factory: Callable[[], Segmenter] | None = None,
        limit: int | None = None,
        workers: int = 1,
        devices: Sequence[str] | None = None,
        progress: bool = True,
    ) -> EvaluationReport:
        """Evaluate the first `limit` expressions (all by default), skipping cached ones.

        Either `segmenter` (in this process) or `factory` (called once per process; with workers > 1 each
        worker gets its own GPU through CUDA_VISIBLE_DEVICES).
        """
        from tqdm import tqdm

        if segmenter is None and factory is None:
            raise ValueError("give a segmenter or a segmenter factory")
        exprs = self.dataset.expressions()
        if limit is not None:
            exprs = exprs[: max(0, limit)]
        if not exprs:
            raise DecafError(
                f"{self.dataset.name} {self.dataset.split}: no expressions found under {self.dataset.root}"
            )
        records: dict[str, ExpressionRecord] = {}
        for expr in exprs:
            cached = self.cached(expr)
            if cached is not None:
                records[expr.key] = cached
        pending = [e for e in exprs if e.key not in records]
        bar = tqdm(total=len(exprs), initial=len(records), desc=f"{self.dataset.name}/{self.dataset.split}",
                   unit="exp", disable=not progress)  # fmt: skip
        try:
            for expr, payload, error in self._segment_all(pending, segmenter, factory, workers, devices):
                try:
                    if error is not None:
                        raise error
                    records[expr.key] = self.finish(expr, payload)
                except Exception as exc:  # noqa: BLE001 - one bad expression must not stop the benchmark
                    records[expr.key] = ExpressionRecord(
                        expr.video, expr.exp_id, expr.text, len(expr.frames), "error", expr.type_id,
                        error=f"{type(exc).__name__}: {exc}",
                    )  # fmt: skip
                bar.update(1)
                bar.set_postfix_str(_running_score(records.values()))
        finally:
            bar.close()
        return self._report([records[e.key] for e in exprs])

    def _segment_all(
        self,
        pending: list[Expression],
        segmenter: Segmenter | None,
        factory: Callable[[], Segmenter] | None,
        workers: int,
        devices: Sequence[str] | None,
    ) -> Iterator[tuple[Expression, SegmentPayload | None, Exception | None]]:
        if not pending:
            return
        if workers <= 1 or factory is None:
            seg = segmenter if segmenter is not None else factory()  # a model that fails to load stops here
            for expr in pending:
                try:
                    yield expr, run_segmenter(seg, expr), None
                except Exception as exc:  # noqa: BLE001
                    yield expr, None, exc
            return
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

    # reporting ---------------------------------------------------------------------------------------
    def _report(self, records: list[ExpressionRecord]) -> EvaluationReport:
        metrics = aggregate(records, self.dataset.aggregation) if self.dataset.has_gt else {}
        csv_path = self.out_dir / "results.csv"
        write_csv(records, csv_path)
        submission_zip = None
        if not self.dataset.has_gt and records and all(r.status == "submitted" for r in records):
            submission_zip = Path(shutil.make_archive(str(self.out_dir / "submission"), "zip", self.mask_dir))
        report = EvaluationReport(
            self.dataset.name, self.dataset.split, self.dataset.aggregation, records, metrics, self.out_dir,
            csv_path, self.out_dir / "summary.json", self.mask_dir if self.save_masks else None, submission_zip,
        )  # fmt: skip
        summary = {
            "dataset": report.dataset,
            "split": report.split,
            "protocol": PROTOCOLS[report.protocol],
            "expressions": len(records),
            "failed": len(report.failed),
            "metrics_percent": metrics,
            "submission_zip": str(submission_zip) if submission_zip else None,
        }
        report.summary_path.write_text(json.dumps(summary, indent=1, allow_nan=True))
        return report


def _running_score(records: Any) -> str:
    scored = [r for r in records if r.status != "submitted"]
    if not scored:
        return ""
    return f"J&F {100 * np.mean([((r.j or 0.0) + (r.f or 0.0)) / 2 for r in scored]):.1f}"


def aggregate(records: Sequence[ExpressionRecord], protocol: str) -> dict[str, Any]:
    """Benchmark numbers in percent; failed expressions count as J = F = 0, as in the official tools."""
    rows = []
    for r in records:
        row = {"j": r.j or 0.0, "f": r.f or 0.0, "type_id": r.type_id}
        if r.a is not None or (r.status == "error" and protocol == "revos"):
            row.update(a=r.a or 0.0, r=r.r or 0.0)
        rows.append(row)
    if protocol == "mevis":
        m = mevis_aggregate([r["j"] for r in rows], [r["f"] for r in rows])
        return {"overall": {"J": 100 * m["J"], "F": 100 * m["F"], "JF": 100 * m["JF"], "count": m["count"]}}
    if protocol == "revos":
        return revos_aggregate([r for r in rows if r["type_id"] is not None])
    return {"overall": pooled_percent_aggregate(rows)}


CSV_FIELDS = ["video", "exp_id", "type_id", "expression", "frames", "J", "F", "JF", "A", "R",
              "status", "object_name", "score", "seconds", "error"]  # fmt: skip


def write_csv(records: Sequence[ExpressionRecord], path: Path) -> Path:
    """One row per expression; J/F/JF/A/R in percent rounded to 2 decimals like eval_revos / eval_rvos."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS)
        writer.writeheader()
        for r in records:
            scored = r.j is not None and r.f is not None
            writer.writerow(
                {
                    "video": r.video, "exp_id": r.exp_id, "type_id": "" if r.type_id is None else r.type_id,
                    "expression": r.text, "frames": r.num_frames,
                    "J": official_round(100 * r.j) if scored else "",
                    "F": official_round(100 * r.f) if scored else "",
                    "JF": official_round(100 * (r.j + r.f) / 2) if scored else "",
                    "A": official_round(100 * r.a) if r.a is not None else "",
                    "R": official_round(100 * r.r) if r.r is not None else "",
                    "status": r.status, "object_name": r.object_name,
                    "score": "" if r.score is None else round(r.score, 4), "seconds": r.seconds, "error": r.error,
                }
            )  # fmt: skip
    return path


def format_table(report: EvaluationReport) -> str:
    """The printed J / F / J&F table (percent)."""
    head = f"{report.dataset} / {report.split}: {len(report.records)} expressions"
    if report.failed:
        head += f", {len(report.failed)} failed (scored 0; rerun to retry)"
    lines = [head]
    if any(r.random_weights for r in report.records):
        lines.append("made with random-weight test models: these numbers are meaningless")
    if not report.metrics:
        lines.append("no public ground truth: masks written to " + str(report.submission_dir))
        if report.submission_zip:
            lines.append(f"submission archive: {report.submission_zip}")
        return "\n".join(lines)
    lines.append(PROTOCOLS[report.protocol])
    extra = [m for m in ("A", "R") if any(m in v for v in report.metrics.values())]
    cols = ["J", "F", "J&F", *extra, "n"]
    lines.append(f"{'':<10}" + "".join(f"{c:>9}" for c in cols))
    for name, values in report.metrics.items():
        cells = [values["J"], values["F"], values["JF"], *[values[m] for m in extra]]
        text = "".join(f"{'nan' if math.isnan(v) else f'{v:.2f}':>9}" for v in cells)
        lines.append(f"{name:<10}{text}{values['count']:>9}")
    return "\n".join(lines)
