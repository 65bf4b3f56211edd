"""Smoke run of benchmarks/bench_scale.py (subprocess, tiny models, two tiny clips): it prints the throughput of 1
and 2 Ray workers and their ratio, all positive."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


@pytest.mark.slow
def test_bench_scale_prints_both_throughputs_and_their_ratio() -> None:
    with tempfile.TemporaryDirectory(prefix="dray") as ray_tmp:  # short: Ray's socket paths live under it
        env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_ADDRESS="")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        proc = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "bench_scale.py"), "--clips", "2", "--frames", "4",
             "--height", "32", "--width", "48"],
            capture_output=True, text=True, timeout=900, env=env, cwd=REPO,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rates = []
    for label in ("1 worker ", "2 workers"):
        match = re.search(rf"^{label}\s+{NUMBER} s\s+{NUMBER} videos/hour$", out, flags=re.MULTILINE)
        assert match, out
        rates.append(float(match.group(2)))
    assert all(rate > 0 for rate in rates)
    ratio = re.search(rf"^throughput ratio \(2 workers / 1 worker\): {NUMBER}x$", out, flags=re.MULTILINE)
    assert ratio and float(ratio.group(1)) == pytest.approx(rates[1] / rates[0], rel=0.02), out
    assert "1 worker(s) [cpu], 1 ready" in out and "2 worker(s) [cpu, cpu], 2 ready" in out, out
