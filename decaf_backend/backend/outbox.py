"""Predictions to post go through an on-disk outbox: written first, posted by a sender thread, retried with
backoff until Label Studio accepts them, across restarts (a new process sends what the last one left).

Exactly once: an entry is removed only after Label Studio accepted it, and the post itself checks the task's
stored predictions first (runtime.post_prediction), so an entry whose post went through just before a crash is
not posted twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Entry:
    project: Any
    task_id: Any
    prediction: dict[str, Any]
    replace_ok: bool = False
    attempts: int = 0
    last_error: str = ""


class Outbox:
    def __init__(
        self,
        root: Path,
        post: Callable[[Entry], None],
        on_failure: Callable[[Entry, BaseException], None] | None = None,
        first_retry_s: float = 1.0,
        max_retry_s: float = 60.0,
    ) -> None:
        self.root = root
        self._post = post
        self._on_failure = on_failure
        self.first_retry_s, self.max_retry_s = first_retry_s, max_retry_s
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False
        self.sent = 0
        self.failures = 0
        if self.pending():
            self.start()  # what an earlier process left

    def add(self, project: Any, task_id: Any, prediction: dict[str, Any], replace_ok: bool = False) -> Path:
        """Write the entry to disk (atomically) and wake the sender; returns the entry's file."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = Entry(project, task_id, prediction, replace_ok)
        path = self.root / f"{time.time_ns()}-{os.getpid()}-{threading.get_ident()}.json"
        self._write(path, entry)
        self.start()
        self._wake.set()
        return path

    def pending(self) -> int:
        return len(self._files())

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._send_loop, name="decaf-outbox", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()

    def _files(self) -> list[Path]:
        return sorted(self.root.glob("*.json")) if self.root.is_dir() else []

    @staticmethod
    def _write(path: Path, entry: Entry) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(entry)))
        os.replace(tmp, path)

    def _send_loop(self) -> None:
        delay = 0.0
        while not self._stop:
            if delay:
                self._wake.wait(delay)
            self._wake.clear()
            files = self._files()
            if not files:
                self._wake.wait(5.0)
                delay = 0.0
                continue
            delay = 0.0
            for path in files:
                if self._stop:
                    return
                try:
                    entry = Entry(**json.loads(path.read_text()))
                except (FileNotFoundError, ValueError, TypeError) as exc:
                    log.error("outbox entry %s is unreadable (%s): set aside", path.name, exc)
                    path.replace(path.with_suffix(".bad"))
                    continue
                try:
                    self._post(entry)
                except Exception as exc:  # Label Studio down, network: keep it and retry later
                    self.failures += 1
                    entry.attempts += 1
                    entry.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    self._write(path, entry)
                    delay = min(self.max_retry_s, self.first_retry_s * 2 ** min(entry.attempts - 1, 16))
                    log.warning(
                        "posting the prediction of task %s failed (attempt %d, retry in %.1f s): %s",
                        entry.task_id, entry.attempts, delay, entry.last_error,
                    )  # fmt: skip
                    if self._on_failure is not None:
                        self._on_failure(entry, exc)
                    break  # back off; entries are sent in order
                path.unlink(missing_ok=True)
                self.sent += 1
