"""What one evaluation produces: a record per expression and the report over the split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datasets import Expression


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

    @classmethod
    def failure(cls, expr: Expression, error: str) -> ExpressionRecord:
        """The record of an expression that failed with `error` ("ExcType: message")."""
        return cls(expr.video, expr.exp_id, expr.text, len(expr.frames), "error", expr.type_id, error=error)


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
