"""What the backend's caches weigh: masks (compressed) and live SAM2 correction sessions (an estimate per frame).

Every cache of the backend is a `decaf_backend.lru.BoundedCache` with one of these `sizeof` functions.
"""

from __future__ import annotations

from typing import Any

from ..types import VideoSegmentation


def masks_bytes(seg: VideoSegmentation) -> int:
    """The compressed masks a segmentation holds."""
    return seg.masks.nbytes


def estimate_bytes(seg: VideoSegmentation, session_bytes_per_frame: int) -> int:
    """Compressed masks plus an estimate of the SAM2 state (memory features per tracked frame) when live."""
    masks = seg.masks
    session = masks.num_frames * session_bytes_per_frame if seg.session is not None else 0
    return masks.nbytes + session


def session_bytes(session: Any, num_frames: int, session_bytes_per_frame: int, masks_nbytes: int) -> int:
    """A live correction session: its SAM2 state (estimated per frame) plus the masks it answered."""
    return num_frames * session_bytes_per_frame + masks_nbytes
