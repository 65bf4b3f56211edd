"""J (region similarity) and F (boundary F-measure) as the official DAVIS-2017 / MeViS / ReVOS tools compute them.

Every quirk of the official code is kept on purpose (see shared/golden/jf/README.md): published numbers are
only comparable when the metric is bit-for-bit the same, including the empty-mask rules, the half-pixel
boundary offset of seg2bmap, the disk kernel and db_statistics' uint8 bin indices.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

DEFAULT_BOUND_TH = 0.008  # boundary tolerance as a fraction of the image diagonal (DAVIS default)


# ----------------------------------------------------------------------------------------------- per frame


def db_eval_iou(
    annotation: np.ndarray, segmentation: np.ndarray, void_pixels: np.ndarray | None = None
) -> float | np.ndarray:
    """Region similarity J for one (H, W) frame (float) or a (T, H, W) stack (per-frame array).

    Any non-zero value is foreground; void pixels leave both intersection and union; an empty union gives 1.
    """
    gt = np.asarray(annotation).astype(bool)
    pred = np.asarray(segmentation).astype(bool)
    if gt.shape != pred.shape:
        raise ValueError(f"annotation {gt.shape} and segmentation {pred.shape} differ in shape")
    keep = np.ones_like(gt) if void_pixels is None else ~np.asarray(void_pixels).astype(bool)
    inter = np.sum(gt & pred & keep, axis=(-2, -1))
    union = np.sum((gt | pred) & keep, axis=(-2, -1))
    empty = np.isclose(union, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    if np.ndim(j) == 0:
        return 1.0 if empty else float(j)
    j = np.asarray(j, dtype=np.float64)
    j[empty] = 1.0
    return j


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """Berkeley seg2bmap boundary map of a binary (H, W) mask, offset half a pixel towards the origin.

    A pixel is boundary when it differs from its east, south or south-east neighbour (0 beyond the image);
    the last row only compares east, the last column only south, and the bottom-right pixel is never
    boundary — hence a full-frame mask has no boundary at all.
    """
    seg = np.asarray(seg).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap takes a 2-D mask, got shape {seg.shape}")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: float) -> np.ndarray:
    """skimage.morphology.disk(radius) as uint8: lattice points (dy, dx) in arange(-r, r+1)² with dy²+dx² ≤ r²."""
    axis = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(axis, axis)
    return ((xx**2 + yy**2) <= radius**2).astype(np.uint8)


def boundary_tolerance(shape: Sequence[int], bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Tolerance radius in pixels: bound_th itself when ≥ 1, else ceil(bound_th · image diagonal)."""
    if bound_th >= 1:
        return bound_th
    return float(np.ceil(bound_th * np.linalg.norm(shape[:2])))


def f_measure(
    foreground_mask: np.ndarray,
    gt_mask: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> float:
    """Boundary F-measure of one (H, W) prediction against its ground truth (official argument order).

    Void pixels become background before the boundaries are extracted (they are not ignored). Boundary
    pixels match when they lie within the dilated other boundary; no one-to-one matching.
    """
    pred = np.asarray(foreground_mask).astype(bool)
    gt = np.asarray(gt_mask).astype(bool)
    if void_pixels is not None:
        keep = ~np.asarray(void_pixels).astype(bool)
        pred, gt = pred & keep, gt & keep
    kernel = disk(boundary_tolerance(pred.shape, bound_th))
    pred_b = seg2bmap(pred)
    gt_b = seg2bmap(gt)
    n_pred = int(pred_b.sum())
    n_gt = int(gt_b.sum())
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
        gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
        precision = np.sum(pred_b & gt_dil) / float(n_pred)
        recall = np.sum(gt_b & pred_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_eval_boundary(
    annotation: np.ndarray,
    segmentation: np.ndarray,
    void_pixels: np.ndarray | None = None,
    bound_th: float = DEFAULT_BOUND_TH,
) -> float | np.ndarray:
    """Boundary F for one (H, W) frame (float) or each frame of a (T, H, W) stack (array)."""
    annotation, segmentation = np.asarray(annotation), np.asarray(segmentation)
    if annotation.shape != segmentation.shape:
        raise ValueError(
            f"annotation {annotation.shape} and segmentation {segmentation.shape} differ in shape"
        )
    if annotation.ndim == 2:
        return f_measure(segmentation, annotation, void_pixels, bound_th)
    if annotation.ndim != 3:
        raise ValueError(f"db_eval_boundary takes 2-D or 3-D masks, got {annotation.ndim}-D")
    out = np.zeros(annotation.shape[0])
    for t in range(annotation.shape[0]):
        void = None if void_pixels is None else void_pixels[t]
        out[t] = f_measure(segmentation[t], annotation[t], void, bound_th)
    return out


def r2vos_accuracy(gt: np.ndarray, pred: np.ndarray) -> float:
    """ReVOS metric A for one frame: fraction of pixels whose *raw* values agree (gt 0/1, pred as stored)."""
    return float(np.mean(np.asarray(gt) == np.asarray(pred)))


def r2vos_robustness(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> float:
    """ReVOS metric R for one frame: max(1 − Σ(1−gt)·pred / (Σ foreground + 1e-6), 0), in uint8 arithmetic.

    The official code multiplies raw uint8 arrays, so a 0/255 prediction counts 255 per false pixel; kept
    as is so that numbers compare with published ones.
    """
    gt = np.asarray(gt, dtype=np.uint8)
    pred = np.asarray(pred, dtype=np.uint8)
    neg = ((1 - gt) * pred).sum()  # uint8 wrap-around exactly as in the official tool
    pos = np.asarray(foreground, dtype=np.uint8).sum()
    return float(max(1 - neg / (pos + 1e-6), 0.0))


# --------------------------------------------------------------------------------------- per-object statistics


def db_statistics(
    per_frame_values: Sequence[float] | np.ndarray, numpy1_promotion: bool = False
) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values, as davis2017 `db_statistics` under numpy ≥ 2.

    mean = nanmean(v); recall = mean(v > 0.5) (NaN counts as a miss); decay = nanmean(bin 0) − nanmean(bin 3)
    over 4 bins whose edges are round(linspace(1, N, 5)) − 1, inclusive at both ends. The official code
    stores the edges as uint8, so they wrap above 255, and `edge + 1` wraps 255 to 0 under numpy 2 type
    promotion (NaN decay for N = 256). `numpy1_promotion=True` reproduces numpy 1.x, where only the cast wraps.
    """
    v = np.asarray(per_frame_values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(v)) if v.size else math.nan
        recall = float(np.nanmean(v > 0.5)) if v.size else math.nan
        edges = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64) % 256  # uint8 cast
        bins = []
        for i in range(4):
            stop = int(edges[i + 1]) + 1
            if not numpy1_promotion:
                stop %= 256  # uint8 + python int stays uint8 under NEP 50
            bins.append(v[int(edges[i]) : stop])
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


# ------------------------------------------------------------------------------------------ DAVIS evaluation


@dataclass
class ObjectScores:
    """Per-frame J/F of one object of one sequence and its DAVIS statistics."""

    name: str
    gt_object: int  # 1-based gt object id the scores were computed against
    J: np.ndarray
    F: np.ndarray
    J_mean: float = field(init=False)
    J_recall: float = field(init=False)
    J_decay: float = field(init=False)
    F_mean: float = field(init=False)
    F_recall: float = field(init=False)
    F_decay: float = field(init=False)

    def __post_init__(self) -> None:
        self.J_mean, self.J_recall, self.J_decay = db_statistics(self.J)
        self.F_mean, self.F_recall, self.F_decay = db_statistics(self.F)


def _split_labels(labels: np.ndarray, num_objects: int) -> np.ndarray:
    """(T, H, W) label map → (K, T, H, W) bool, object k+1 in slot k."""
    ids = np.arange(1, num_objects + 1, dtype=np.int64)[:, None, None, None]
    return labels[None].astype(np.int64) == ids


def _jf_stack(
    gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None, bound_th: float
) -> tuple[np.ndarray, np.ndarray]:
    j = np.atleast_1d(db_eval_iou(gt, pred, void))
    f = np.atleast_1d(db_eval_boundary(gt, pred, void, bound_th))
    return j, f


def evaluate_davis_sequence(
    gt_labels: np.ndarray,
    pred_labels: np.ndarray,
    task: str = "semi-supervised",
    name: str = "seq",
    bound_th: float = DEFAULT_BOUND_TH,
    max_proposals: int = 20,
) -> list[ObjectScores]:
    """Score one DAVIS sequence given (T, H, W) label maps (0 background, k object k, 255 void in the gt).

    semi-supervised: frames 1..T-2 only, void ignored (set to background), predicted ids beyond the gt's
    object count are an error, missing ones score 0. unsupervised: all frames, 255 is void, up to
    `max_proposals` predicted ids matched to gt objects by the Hungarian method on mean (J+F)/2; rows come
    out in proposal order but are named `<name>_1, _2, …` like the official tool.
    """
    from scipy.optimize import linear_sum_assignment

    gt_labels = np.asarray(gt_labels)
    pred_labels = np.asarray(pred_labels)
    if gt_labels.shape != pred_labels.shape:
        raise ValueError(f"gt {gt_labels.shape} and prediction {pred_labels.shape} differ in shape")
    void = gt_labels == 255
    gt_clean = np.where(void, 0, gt_labels)
    num_objects = int(gt_clean[0].max()) if gt_clean.size else 0
    if task == "semi-supervised":
        gt_clean, pred_labels, void = gt_clean[1:-1], pred_labels[1:-1], None
    elif task != "unsupervised":
        raise ValueError(f"unknown DAVIS task {task!r} (semi-supervised or unsupervised)")
    gt_objs = _split_labels(gt_clean, num_objects)
    num_pred = int(pred_labels.max()) if pred_labels.size else 0
    limit = num_objects if task == "semi-supervised" else max_proposals
    if num_pred > limit:
        raise ValueError(f"{name}: predicted object id {num_pred} exceeds the allowed {limit}")
    pred_objs = _split_labels(pred_labels, max(num_pred, num_objects))
    if task == "semi-supervised":
        out = []
        for k in range(num_objects):
            j, f = _jf_stack(gt_objs[k], pred_objs[k], None, bound_th)
            out.append(ObjectScores(f"{name}_{k + 1}", k + 1, j, f))
        return out
    n_res = pred_objs.shape[0]
    j_all = np.zeros((n_res, num_objects, gt_clean.shape[0]))
    f_all = np.zeros_like(j_all)
    for g in range(num_objects):
        for r in range(n_res):
            j_all[r, g], f_all[r, g] = _jf_stack(gt_objs[g], pred_objs[r], void, bound_th)
    score = (j_all.mean(axis=2) + f_all.mean(axis=2)) / 2
    rows, cols = linear_sum_assignment(-score)
    return [
        ObjectScores(f"{name}_{i + 1}", int(c) + 1, j_all[r, c], f_all[r, c])
        for i, (r, c) in enumerate(zip(rows, cols))
    ]


def davis_global_metrics(objects: Iterable[ObjectScores]) -> dict[str, float]:
    """Plain means over all objects of all sequences (evaluation_method.py); J&F-Mean = (J-Mean + F-Mean)/2."""
    objs = list(objects)

    def mean(attr: str) -> float:
        return float(np.mean([getattr(o, attr) for o in objs]))

    out = {
        "J-Mean": mean("J_mean"),
        "J-Recall": mean("J_recall"),
        "J-Decay": mean("J_decay"),
        "F-Mean": mean("F_mean"),
        "F-Recall": mean("F_recall"),
        "F-Decay": mean("F_decay"),
    }
    return {"J&F-Mean": (out["J-Mean"] + out["F-Mean"]) / 2, **out}


# --------------------------------------------------------------------------- expression-level (MeViS / ReVOS)


def frame_scores(gt: np.ndarray, pred: np.ndarray, bound_th: float = DEFAULT_BOUND_TH) -> tuple[float, float]:
    """(J, F) of one frame, both masks binarised (> 0), no void — the MeViS / ReVOS / DecAF per-frame unit."""
    return float(db_eval_iou(gt, pred)), f_measure(pred, gt, None, bound_th)


def official_round(value: float) -> float:
    """`round(100 * x, 2)` as the ReVOS/DecAF tools do it on numpy floats (numpy rounding, not Python's)."""
    return float(np.round(np.float64(value), 2))


def mevis_aggregate(j_values: Sequence[float], f_values: Sequence[float]) -> dict[str, float]:
    """eval_mevis.py: J and F are means over expressions (fractions, unrounded); J&F = (J + F) / 2."""
    j, f = float(np.mean(j_values)), float(np.mean(f_values))
    return {"J": j, "F": f, "JF": (j + f) / 2, "count": len(j_values)}


def expression_percent(j: float, f: float) -> dict[str, float]:
    """Per-expression row of eval_revos.py / DecAF eval_rvos.py: percent rounded to 2 decimals."""
    return {
        "J": official_round(100 * j),
        "F": official_round(100 * f),
        "JF": official_round(100 * (j + f) / 2),
    }


def pooled_percent_aggregate(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """DecAF eval_rvos.py (Ref-DAVIS17, ReasonVOS): means of the rounded per-expression percents, pooled."""
    j = float(np.mean([official_round(100 * r["j"]) for r in rows]))
    f = float(np.mean([official_round(100 * r["f"]) for r in rows]))
    return {"J": j, "F": f, "JF": (j + f) / 2, "count": len(rows)}


def revos_aggregate(rows: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """eval_revos.py: rounded percents averaged over referring (type 0) and reasoning (type 1) separately.

    `rows` hold raw fractions j, f (and optionally a, r) plus type_id. overall = mean of the two split
    means (type 2 is left out of everything). A split with no rows gives NaN, as numpy's mean of nothing.
    """
    metrics = ["J", "F"] + [m for m in ("A", "R") if rows and all(m.lower() in r for r in rows)]

    def split(type_id: int) -> dict[str, float]:
        sel = [r for r in rows if int(r["type_id"]) == type_id]
        out: dict[str, float] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)
            for m in metrics:
                out[m] = (
                    float(np.mean([official_round(100 * r[m.lower()]) for r in sel])) if sel else math.nan
                )
        out["JF"] = (out["J"] + out["F"]) / 2
        out["count"] = len(sel)
        return out

    referring, reason = split(0), split(1)
    overall = {m: (referring[m] + reason[m]) / 2 for m in [*metrics, "JF"]}
    overall["count"] = referring["count"] + reason["count"]
    return {"referring": referring, "reason": reason, "overall": overall}
