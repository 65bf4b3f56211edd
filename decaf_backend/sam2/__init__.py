"""The SAM2 side of DecAF, split as sam2 itself is (building / predictor / utilities):

- `predictor`: `Sam2VideoPredictor`, the tracking.VideoPredictor over Meta's video predictor, and `propagate_all`;
- `frames`: the lazily prepared frames SAM2 reads and the bounded cache of their image features;
- `patches`: the few process-wide changes to the sam2 package (each with its reason);
- `loading`: hub ids, checkpoints and folders -> a ready predictor;
- `tiny`: a random-weight SAM2.1 in the real on-disk format, for tests.

Importing this package does not import `sam2`: the first predictor does.
"""

from __future__ import annotations

from .loading import (
    HUB_MODELS,
    Sam2Files,
    autocast_dtype,
    load_sam2_config,
    load_sam2_predictor,
    resolve_sam2,
)
from .predictor import Sam2VideoPredictor, propagate_all
from .tiny import build_tiny_sam2

__all__ = [
    "HUB_MODELS",
    "Sam2Files",
    "Sam2VideoPredictor",
    "autocast_dtype",
    "build_tiny_sam2",
    "load_sam2_config",
    "load_sam2_predictor",
    "propagate_all",
    "resolve_sam2",
]
