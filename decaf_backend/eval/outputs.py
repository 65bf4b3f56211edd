"""Files an evaluation writes besides its cache: mask PNGs, overlays, results.csv, the submission zip."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import DecafError
from ..types import FrameMasks
from .datasets import Expression, safe_relpath
from .metrics import official_round
from .records import ExpressionRecord
from .segmenters import SegmentPayload


def write_mask_pngs(folder: Path, expr: Expression, masks: FrameMasks) -> None:
    """0/255 single-channel PNG per listed frame: `<folder>/<video>/<exp_id>/<frame>.png`."""
    target = folder / safe_relpath(expr.video) / safe_relpath(expr.exp_id)
    target.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(expr.frames):
        if not cv2.imwrite(str(target / f"{name}.png"), masks[i].astype(np.uint8) * 255):
            raise DecafError(f"cannot write {target / name}.png")


def write_expression_overlay(folder: Path, expr: Expression, payload: SegmentPayload, fmt: str) -> Path:
    """`<folder>/<video>/<exp_id>.<fmt>`: the listed frames with the mask, points and object name."""
    from ..overlay import write_overlay

    path = folder / safe_relpath(expr.video) / f"{safe_relpath(expr.exp_id)}.{fmt}"
    caption = expr.text + (f" → {payload.object_name}" if payload.object_name else "")
    write_overlay(path, expr.reader().iter_frames(), [payload.masks], payload.points, caption, fps=10.0)
    return path


def zip_submission(mask_dir: Path, out_dir: Path) -> Path:
    """`<out>/submission.zip` holding the mask folder in the benchmark server's layout."""
    return Path(shutil.make_archive(str(out_dir / "submission"), "zip", mask_dir))


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
