"""Where the reference implementation's golden outputs live (`../shared/golden`, or DECAF_GOLDEN_DIR), and
what happens when some are missing: a skip on a developer's machine, a failure when DECAF_REQUIRE_GOLDEN is
set (CI), for a missing folder and for any single missing file alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(
    os.environ.get("DECAF_GOLDEN_DIR", Path(__file__).resolve().parents[2] / "shared" / "golden")
)

# every golden file a test reads: checked all at once when the session starts, so CI cannot quietly lose a
# comparison because one file (or a case of a glob) went missing
GOLDEN_FILES = (
    "README.md",
    "jf/cases.npz",
    "jf/expected.json",
    "postprocess/post_case1_T8.json",
    "postprocess/post_case1_T8.npz",
    "postprocess/post_case2_T7_odd.json",
    "postprocess/post_case2_T7_odd.npz",
    "rollout/rollout_case1.json",
    "rollout/rollout_case1.npz",
    "rollout/rollout_case1_tiny_text_model.safetensors",
    "rollout/rollout_case2.json",
    "rollout/rollout_case2.npz",
    "rollout/rollout_case2_tiny_text_model.safetensors",
    "sam2/sam2_ac_score_case.json",
    "sam2/sam2_ac_score_case.npz",
    "sam2/sam2_nms_cases.npz",
    "sam2/sam2_orchestration_thr070.json",
    "sam2/sam2_orchestration_thr070.npz",
    "sam2/sam2_orchestration_thr080.json",
    "sam2/sam2_orchestration_thr080.npz",
    "e2e/e2e_tiny_qwen25vl.json",
    "e2e/e2e_tiny_qwen25vl.npz",
    "e2e/tiny_qwen25vl/config.json",
    "e2e/tiny_qwen25vl/model.safetensors",
    "e2e/tiny_qwen25vl/tokenizer.json",
    "e2e_llavaov/e2e_tiny_llavaov.json",
    "e2e_llavaov/e2e_tiny_llavaov.npz",
    "e2e_llavaov/tiny_llavaov/config.json",
    "e2e_llavaov/tiny_llavaov/model.safetensors",
    "e2e_llavaov/tiny_llavaov/frames/00000.png",
    "e2e_internvl3/e2e_tiny_internvl3.json",
    "e2e_internvl3/e2e_tiny_internvl3.npz",
    "e2e_internvl3/tiny_internvl3/config.json",
    "e2e_internvl3/tiny_internvl3/model.safetensors",
    "e2e_internvl3/tiny_internvl3/frames/00000.png",
)


def golden_required() -> bool:
    return bool(os.environ.get("DECAF_REQUIRE_GOLDEN"))


def missing_golden_files(root: Path = GOLDEN_DIR) -> list[str]:
    return [name for name in GOLDEN_FILES if not (root / name).is_file()]


def skip_or_fail(reason: str) -> None:
    """Skip a golden comparison whose data is absent, unless DECAF_REQUIRE_GOLDEN makes that a failure."""
    if golden_required():
        pytest.fail(f"DECAF_REQUIRE_GOLDEN is set, but {reason}", pytrace=False)
    pytest.skip(reason)


def golden_file(*parts: str) -> Path:
    """Path of one golden file; a missing one skips the test (fails it under DECAF_REQUIRE_GOLDEN)."""
    path = GOLDEN_DIR.joinpath(*parts)
    if not path.is_file():
        skip_or_fail(f"golden file {path} is missing (set DECAF_GOLDEN_DIR)")
    return path
