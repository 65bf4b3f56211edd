"""Scores: one expression's masks against its ground truth, and the split's numbers the official way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DecafError
from ..types import FrameMasks
from . import metrics
from .datasets import Expression, RVOSDataset
from .records import ExpressionRecord


def score_expression(
    dataset: RVOSDataset,
    expr: Expression,
    masks: FrameMasks,
    record: ExpressionRecord,
    bound_th: float = metrics.DEFAULT_BOUND_TH,
) -> None:
    """Fill J, F (per frame and mean) and, for ReVOS, A and R of `record` from `masks`."""
    fg_iter = dataset.foreground_masks(expr)
    a_vals, r_vals = [], []
    n = 0
    for i, gt in enumerate(dataset.gt_masks(expr)):
        pred = masks[i]
        if pred.shape != gt.shape:
            raise DecafError(
                f"{expr.key} frame {expr.frames[i]}: mask {pred.shape} vs ground truth {gt.shape}"
            )
        j, f = metrics.frame_scores(gt, pred, bound_th)
        record.j_frames.append(j)
        record.f_frames.append(f)
        if fg_iter is not None:
            raw_pred = pred.astype(np.uint8) * 255  # the 0/255 PNG values the official tool reads
            a_vals.append(metrics.r2vos_accuracy(gt, raw_pred))
            r_vals.append(metrics.r2vos_robustness(gt, raw_pred, next(fg_iter)))
        n += 1
    if n != len(expr.frames):
        raise DecafError(f"{expr.key}: ground truth has {n} frames, the JSON lists {len(expr.frames)}")
    record.j, record.f = float(np.mean(record.j_frames)), float(np.mean(record.f_frames))
    if fg_iter is not None:
        record.a, record.r = float(np.mean(a_vals)), float(np.mean(r_vals))


def aggregate(records: Sequence[ExpressionRecord], protocol: str) -> dict[str, Any]:
    """Benchmark numbers in percent; failed expressions count as J = F = 0, as in the official tools."""
    rows = []
    for r in records:
        row = {"j": r.j or 0.0, "f": r.f or 0.0, "type_id": r.type_id}
        if r.a is not None or (r.status == "error" and protocol == "revos"):
            row.update(a=r.a or 0.0, r=r.r or 0.0)
        rows.append(row)
    if protocol == "mevis":
        m = metrics.mevis_aggregate([r["j"] for r in rows], [r["f"] for r in rows])
        return {"overall": {"J": 100 * m["J"], "F": 100 * m["F"], "JF": 100 * m["JF"], "count": m["count"]}}
    if protocol == "revos":
        return metrics.revos_aggregate([r for r in rows if r["type_id"] is not None])
    return {"overall": metrics.pooled_percent_aggregate(rows)}
