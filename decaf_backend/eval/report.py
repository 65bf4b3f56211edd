"""What a person reads: the J / F / J&F table, the failures with their reasons, summary.json."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

import numpy as np

from .records import EvaluationReport, ExpressionRecord

PROTOCOLS = {
    "pooled": "DecAF eval_rvos.py: per-expression J, F in percent rounded to 2 decimals, mean over expressions",
    "mevis": "MeViS eval_mevis.py: mean per-expression J and F over expressions, J&F = (J + F) / 2",
    "revos": "ReVOS eval_revos.py: rounded percents, referring and reasoning averaged separately, overall = mean",
}


def running_score(records: Iterable[ExpressionRecord]) -> str:
    """Progress-bar text: J&F so far over the expressions scored (failures count 0)."""
    scored = [r for r in records if r.status != "submitted"]
    if not scored:
        return ""
    return f"J&F {100 * np.mean([((r.j or 0.0) + (r.f or 0.0)) / 2 for r in scored]):.1f}"


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


def format_failures(report: EvaluationReport) -> str:
    """Every failed expression with its reason, one per line (empty when none failed)."""
    if not report.failed:
        return ""
    lines = [f"{len(report.failed)} expression(s) failed (not cached: a rerun retries them):"]
    lines += [f"  {r.video}/{r.exp_id}: {r.error}" for r in report.failed]
    return "\n".join(lines)


def write_summary(report: EvaluationReport) -> None:
    summary = {
        "dataset": report.dataset,
        "split": report.split,
        "protocol": PROTOCOLS[report.protocol],
        "expressions": len(report.records),
        "failed": len(report.failed),
        "failures": [{"expression": f"{r.video}/{r.exp_id}", "error": r.error} for r in report.failed],
        "metrics_percent": report.metrics,
        "submission_zip": str(report.submission_zip) if report.submission_zip else None,
    }
    report.summary_path.write_text(json.dumps(summary, indent=1, allow_nan=True))
