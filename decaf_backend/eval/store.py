"""The per-expression result cache under `<out>/cache/`: an interrupted run resumes where it stopped.

Only finished expressions are kept (a failure is retried on the next run), each written atomically, and a
folder never mixes results of another dataset, split or model (`run.json` records what made them).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import DecafError
from .datasets import Expression, RVOSDataset, safe_relpath
from .records import ExpressionRecord


class ResultStore:
    def __init__(
        self,
        out_dir: Path,
        dataset: RVOSDataset,
        signature: dict[str, Any],
        restart: bool = False,
        outputs: tuple[Path, ...] = (),
    ) -> None:
        """`restart`: forget cached results, and the `outputs` folders made from them, before anything runs."""
        self.out_dir = out_dir
        self.cache_dir = out_dir / "cache"
        if restart and out_dir.exists():
            for sub in (self.cache_dir, *outputs):
                shutil.rmtree(sub, ignore_errors=True)
        self._check_run(dataset, signature)

    def _check_run(self, dataset: RVOSDataset, signature: dict[str, Any]) -> None:
        """Refuse to mix cached results of another dataset, split or model into this folder."""
        run = {"dataset": dataset.name, "split": dataset.split, "root": str(dataset.root.resolve())}
        run.update({k: v for k, v in signature.items() if v is not None})
        path = self.out_dir / "run.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                old = {}
            diff = {k for k in set(old) | set(run) if old.get(k) != run.get(k)}
            if diff and any(self.cache_dir.rglob("*.json")):
                raise DecafError(
                    f"{self.out_dir} holds results of another run (differs in {', '.join(sorted(diff))}); "
                    "use another --out or --restart"
                )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run, indent=1))

    def path(self, expr: Expression) -> Path:
        return self.cache_dir / safe_relpath(expr.video) / f"{safe_relpath(expr.exp_id)}.json"

    def get(self, expr: Expression) -> ExpressionRecord | None:
        """The finished record of `expr`, or None (never run, failed, or a torn/foreign file)."""
        path = self.path(expr)
        if not path.is_file():
            return None
        try:
            record = ExpressionRecord(**json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError):
            return None  # a torn or foreign file: redo the expression
        return record if record.status in ("ok", "submitted") else None

    def put(self, expr: Expression, record: ExpressionRecord) -> None:
        path = self.path(expr)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record)))
        tmp.replace(path)  # atomic: an interrupted run never leaves half a record
