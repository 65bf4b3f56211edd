"""Where the reference implementation's golden outputs live (`../shared/golden`, or DECAF_GOLDEN_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN_DIR = Path(
    os.environ.get("DECAF_GOLDEN_DIR", Path(__file__).resolve().parents[2] / "shared" / "golden")
)
