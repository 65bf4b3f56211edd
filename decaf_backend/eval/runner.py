"""Benchmark evaluation: segment every expression, score it, cache it, report the split.

The per-expression segmentation is injected (`Segmenter`: Expression → masks), so the same runner serves
DecAF (`PipelineSegmenter`), an oracle that returns the ground truth and tests. This module only orders
the steps; each has its own module: `segmenters` (where masks come from), `pool` (in process or on
workers), `scoring` (J / F / A / R and the official aggregation), `store` (the resumable cache),
`outputs` (PNGs, overlays, CSV, submission zip) and `report` (table, failures, summary.json).
Failures are not cached (a rerun retries them) and score 0 like in the official evaluators.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import DecafError
from .datasets import Expression, RVOSDataset
from .metrics import DEFAULT_BOUND_TH
from .outputs import write_csv, write_expression_overlay, write_mask_pngs, zip_submission
from .pool import Outcome, describe, segment_in_process, segment_with_workers
from .records import EvaluationReport, ExpressionRecord
from .report import running_score, write_summary
from .scoring import aggregate, score_expression
from .segmenters import Segmenter, SegmentPayload
from .store import ResultStore


class EvaluationRunner:
    """Runs one dataset split into `out_dir`: results.csv, summary.json, cache/ and the masks asked for."""

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
        self.mask_dir = self.out_dir / ("submission" if not dataset.has_gt else "predictions")
        self.overlay_dir = self.out_dir / "overlays"
        self.store = ResultStore(self.out_dir, dataset, signature or {}, restart=restart,
                                 outputs=(self.mask_dir, self.overlay_dir))  # fmt: skip

    def cached(self, expr: Expression) -> ExpressionRecord | None:
        return self.store.get(expr)

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
            write_mask_pngs(self.mask_dir / self._submission_prefix, expr, masks)
        if self.dataset.has_gt:
            score_expression(self.dataset, expr, masks, record, self.bound_th)
            record.status = "ok"
        if self.overlay:
            write_expression_overlay(self.overlay_dir, expr, payload, self.overlay)
        self.store.put(expr, record)
        return record

    @property
    def _submission_prefix(self) -> str:
        return self.dataset.submission_prefix if not self.dataset.has_gt else ""

    def run(
        self,
        segmenter: Segmenter | None = None,
        factory: Callable[[], Segmenter] | None = None,
        limit: int | None = None,
        workers: int = 1,
        devices: Sequence[str] | None = None,
        progress: bool = True,
        expressions: Sequence[Expression] | None = None,
        ray_init: Mapping[str, Any] | None = None,
    ) -> EvaluationReport:
        """Evaluate the first `limit` expressions (all by default), skipping cached ones.

        Either `segmenter` (in this process) or a picklable `factory` (called once per worker). With
        workers > 1, or `devices` given, the expressions run on Ray workers, one per entry of `devices`
        (GPU ids or "cpu", cycled; default: the visible GPUs in turn, else CPU workers); `ray_init`: extra
        `ray.init` arguments for the local Ray. `expressions`: the already parsed split.
        """
        from tqdm import tqdm

        if segmenter is None and factory is None:
            raise ValueError("give a segmenter or a segmenter factory")
        exprs = list(self.dataset.expressions() if expressions is None else expressions)
        if limit is not None:
            exprs = exprs[: max(0, limit)]
        if not exprs:
            raise DecafError(
                f"{self.dataset.name} {self.dataset.split}: no expressions found under {self.dataset.root}"
            )
        records = {e.key: r for e in exprs if (r := self.cached(e)) is not None}
        pending = [e for e in exprs if e.key not in records]
        bar = tqdm(total=len(exprs), initial=len(records), desc=f"{self.dataset.name}/{self.dataset.split}",
                   unit="exp", disable=not progress)  # fmt: skip
        try:
            for expr, payload, error in self._segment(
                pending, segmenter, factory, workers, devices, ray_init
            ):
                if error is None:
                    try:
                        records[expr.key] = self.finish(expr, payload)
                    except Exception as exc:  # noqa: BLE001 - one bad expression must not stop the benchmark
                        error = describe(exc)
                if error is not None:
                    records[expr.key] = ExpressionRecord.failure(expr, error)
                bar.update(1)
                bar.set_postfix_str(running_score(records.values()))
        finally:
            bar.close()
        return self._report([records[e.key] for e in exprs])

    def _segment(
        self,
        pending: list[Expression],
        segmenter: Segmenter | None,
        factory: Callable[[], Segmenter] | None,
        workers: int,
        devices: Sequence[str] | None,
        ray_init: Mapping[str, Any] | None,
    ) -> Iterator[Outcome]:
        if not pending:
            return iter(())
        if factory is None or (workers <= 1 and not devices):
            seg = segmenter if segmenter is not None else factory()  # a model that fails to load stops here
            return segment_in_process(pending, seg)
        return segment_with_workers(pending, factory, workers, devices, ray_init)

    def _report(self, records: list[ExpressionRecord]) -> EvaluationReport:
        metrics = aggregate(records, self.dataset.aggregation) if self.dataset.has_gt else {}
        csv_path = write_csv(records, self.out_dir / "results.csv")
        submission_zip = None
        if not self.dataset.has_gt and records and all(r.status == "submitted" for r in records):
            submission_zip = zip_submission(self.mask_dir, self.out_dir)
        report = EvaluationReport(
            self.dataset.name, self.dataset.split, self.dataset.aggregation, records, metrics, self.out_dir,
            csv_path, self.out_dir / "summary.json", self.mask_dir if self.save_masks else None, submission_zip,
        )  # fmt: skip
        write_summary(report)
        return report
