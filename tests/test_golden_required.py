"""DECAF_REQUIRE_GOLDEN turns every golden skip into a failure: a missing folder, a missing file of the
manifest, or any test that skips for want of golden data — checked on a throwaway golden folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.golden import GOLDEN_FILES, golden_file

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import pytest

@pytest.mark.skipif(True, reason="golden data folder /nowhere is absent")
def test_marker_skip():
    pass

def test_fixture_skip(golden_dir):
    from tests.golden import golden_file
    golden_file("not", "there.npz")

def test_other_skip():
    pytest.skip("no GPU here")
"""


def run_probe(tmp_path: Path, golden: Path, required: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "DECAF_REQUIRE_GOLDEN"}
    env.update(DECAF_GOLDEN_DIR=str(golden), PYTHONPATH=str(ROOT))
    if required:
        env["DECAF_REQUIRE_GOLDEN"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rA", "-q",
         "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def fake_golden(folder: Path) -> Path:
    for name in GOLDEN_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return folder


def test_missing_folder_or_file_fails_the_session(tmp_path, monkeypatch):
    import tests.conftest as conftest

    monkeypatch.setenv("DECAF_REQUIRE_GOLDEN", "1")
    monkeypatch.setattr(conftest, "GOLDEN", tmp_path / "absent")
    with pytest.raises(pytest.exit.Exception, match="no golden data folder is at"):
        conftest.pytest_sessionstart(None)

    golden = fake_golden(tmp_path / "golden")
    monkeypatch.setattr(conftest, "GOLDEN", golden)
    conftest.pytest_sessionstart(None)  # complete: the session goes on
    (golden / "sam2" / "sam2_nms_cases.npz").unlink()
    (golden / "jf" / "expected.json").unlink()
    with pytest.raises(pytest.exit.Exception, match="lacks: jf/expected.json, sam2/sam2_nms_cases.npz"):
        conftest.pytest_sessionstart(None)
    monkeypatch.delenv("DECAF_REQUIRE_GOLDEN")
    conftest.pytest_sessionstart(None)  # not required: the tests that need the files skip


def test_golden_skips_fail_when_required(tmp_path):
    """A real pytest run over a probe module: both golden skips fail, the unrelated skip stays a skip."""
    done = run_probe(tmp_path, fake_golden(tmp_path / "golden"), required=True)
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 skipped, 1 error" in done.stdout  # a skipif at setup becomes an error
    assert "ERROR at setup of test_marker_skip" in done.stdout
    assert "but the test skipped: Skipped: golden data folder /nowhere is absent" in done.stdout
    assert "DECAF_REQUIRE_GOLDEN is set, but golden file" in done.stdout  # test_fixture_skip
    assert "SKIPPED [1]" in done.stdout and "no GPU here" in done.stdout


def test_golden_file_skips_or_fails(monkeypatch):
    monkeypatch.delenv("DECAF_REQUIRE_GOLDEN", raising=False)
    with pytest.raises(pytest.skip.Exception, match="golden file .* is missing"):
        golden_file("no", "such.npz")
    monkeypatch.setenv("DECAF_REQUIRE_GOLDEN", "1")
    with pytest.raises(pytest.fail.Exception, match="DECAF_REQUIRE_GOLDEN is set, but golden file"):
        golden_file("no", "such.npz")
