"""Interactive first: corrections have their own lane and never wait behind pre-annotation.

One device serves two kinds of work. Pre-annotation (a DecAF pass: MLLM + SAM2 over a whole video) is long;
a correction (SAM2 prompts + one propagation) is short and an annotator waits for it. They share the device:
a correction starts at once in its own lane, whatever pre-annotation is running (the SAM2 predictor takes its
calls one at a time, so the two interleave call by call, frame by frame during a propagation), and a running
pre-annotation pauses at its next stage boundary (`batch_checkpoint`, the pipeline's progress callback) until no
correction is in flight. Why share rather than preempt: preempting needs the pre-annotation to reach a boundary
before the correction starts, so a correction would still wait for the longest stage (an MLLM pass); sharing
costs the pre-annotation a little time and the correction nothing but the interleaved calls. Corrections run
one at a time among themselves (a SAM2 session is not used by two threads at once).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Lanes:
    def __init__(self) -> None:
        self._corrections = threading.Lock()
        self._cond = threading.Condition()
        self._in_flight = 0
        self.batch_pauses = 0  # how often a pre-annotation stopped at a boundary for a correction

    @contextmanager
    def interactive(self) -> Iterator[None]:
        """Run a correction: counted in flight at once (pre-annotation pauses), one correction at a time."""
        with self._cond:
            self._in_flight += 1
        try:
            with self._corrections:
                yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    @property
    def corrections_in_flight(self) -> int:
        return self._in_flight

    def batch_checkpoint(self, stage: str = "", fraction: float = 0.0) -> None:
        """Called by pre-annotation between stages: returns once no correction is in flight."""
        with self._cond:
            if self._in_flight:
                self.batch_pauses += 1
            while self._in_flight:
                self._cond.wait()
