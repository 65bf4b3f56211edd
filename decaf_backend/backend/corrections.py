"""Correction sessions: the masks answered for a correction depend only on the object's starting segmentation and
the prompts (clicks/boxes) the request carries, plus the corrections the same annotator accepted before.

- Sessions are cached by (segmentation key, prompts applied). A request whose prompts extend a cached sequence (one
  more click) continues that SAM2 state: one propagation. Otherwise (an undo, another annotator, a restart) a session
  starts from the starting state. Two annotators never share clicks: they never share a prompt sequence unless
  they sent the same one, which by definition gives the same masks. The cache is byte-bounded (LRU).
- Accepted corrections: Label Studio drops the pending clicks when a suggestion is accepted, so the next request
  carries only the new click; it also carries the requesting annotator's drafts (docs/ls-corrections.md). When the
  draft's masks of the object are masks we answered, the prompts behind that answer come first. That log of answers
  (digest of masks -> prompts) is on disk: it is what survives a restart besides the starting segmentation.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..lru import BoundedCache
from ..types import Box, Click, FrameMasks, VideoSegmentation
from .session_cache import session_bytes

Prompt = Click | Box
ANSWERS_PER_OBJECT = 64  # answers remembered per object (an annotator accepts one of its last few)


@dataclass
class LiveSession:
    session: Any  # the pipeline's correction session (opaque here)
    masks: FrameMasks
    nbytes: int


def masks_digest(masks: FrameMasks) -> str:
    digest = hashlib.sha1(f"{masks.num_frames}x{masks.height}x{masks.width}".encode())
    for mask in masks:
        digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()


def key_digest(key: Hashable) -> str:
    return hashlib.sha1(json.dumps(key, default=str).encode()).hexdigest()


class AnswerLog:
    """Per object, the prompts behind each masks answer we gave (small JSON files, bounded per object)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def _path(self, key: Hashable) -> Path:
        digest = key_digest(key)
        return self.root / digest[:2] / f"{digest}.json"

    def _read(self, path: Path) -> dict[str, list]:
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def record(self, key: Hashable, masks: FrameMasks, prompts: Sequence[Prompt]) -> None:
        path = self._path(key)
        with self._lock:
            answers = self._read(path)
            answers.pop(digest := masks_digest(masks), None)
            answers[digest] = [_encode(p) for p in prompts]  # newest last
            while len(answers) > ANSWERS_PER_OBJECT:
                answers.pop(next(iter(answers)))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(answers))
            os.replace(tmp, path)

    def prompts_for(self, key: Hashable, masks: FrameMasks) -> list[Prompt] | None:
        """The prompts whose answer had exactly these masks, or None."""
        with self._lock:
            found = self._read(self._path(key)).get(masks_digest(masks))
        if found is None:
            return None
        try:
            return [_decode(p) for p in found]
        except (KeyError, TypeError, ValueError):
            return None


class CorrectionSessions:
    def __init__(self, max_bytes: int, session_bytes_per_frame: int, answers_root: Path) -> None:
        self.cache: BoundedCache[Hashable, LiveSession] = BoundedCache(
            max_bytes=max_bytes, sizeof=lambda live: live.nbytes
        )
        self.bytes_per_frame = session_bytes_per_frame
        self.answers = AnswerLog(answers_root)

    def keep_starting(self, key: Hashable, seg: VideoSegmentation) -> None:
        """The live session a fresh segmentation comes with is the starting state of its corrections."""
        if seg.session is not None:
            self._put(key, (), LiveSession(seg.session, seg.masks, self._size(seg.masks)))

    def correct(
        self,
        pipeline: Any,
        key: Hashable,
        start: VideoSegmentation,
        prompts: Sequence[Prompt],
        video: Any,
    ) -> tuple[VideoSegmentation, int]:
        """(`start` corrected by exactly `prompts`: masks and per-frame confidence, number of prompts newly
        applied to a SAM2 state)."""
        prompts = tuple(prompts)
        if not prompts:
            return start, 0
        live, done = None, 0
        for k in range(len(prompts), -1, -1):  # the longest cached prefix: usually all but the newest click
            live = self.cache.pop((key, prompts[:k]))
            if live is not None:
                done = k
                break
        session = live.session if live is not None else None
        if session is not None and done == 0 and list(getattr(session, "prompts", ())):
            session, live = None, None  # a starting state that was used already: start afresh
        # on failure the popped session is dropped: it may hold a half-applied prompt
        out = pipeline.correct(start, list(prompts), session=session, video=video)
        fresh = out.session is not session or session is None
        applied = len(prompts) if fresh else len(prompts) - done
        self._put(key, prompts, LiveSession(out.session, out.masks, self._size(out.masks)))
        self.answers.record(key, out.masks, prompts)
        return out, applied

    def accepted_prompts(self, key: Hashable, draft: FrameMasks | None) -> list[Prompt]:
        """The prompts of the answer the annotator accepted (its draft holds exactly those masks), else []."""
        if draft is None:
            return []
        return self.answers.prompts_for(key, draft) or []

    def _size(self, masks: FrameMasks) -> int:
        return session_bytes(None, masks.num_frames, self.bytes_per_frame, masks.nbytes)

    def _put(self, key: Hashable, prompts: tuple, live: LiveSession) -> None:
        if self.cache.fits(live):
            self.cache.put((key, tuple(prompts)), live)


def _encode(p: Prompt) -> list:
    if isinstance(p, Click):
        return ["click", p.frame, p.x, p.y, bool(p.positive)]
    return ["box", p.frame, p.x0, p.y0, p.x1, p.y1]


def _decode(raw: list) -> Prompt:
    if raw[0] == "click":
        return Click(int(raw[1]), float(raw[2]), float(raw[3]), bool(raw[4]))
    if raw[0] == "box":
        return Box(int(raw[1]), float(raw[2]), float(raw[3]), float(raw[4]), float(raw[5]))
    raise ValueError(f"unknown prompt kind {raw[0]!r}")
