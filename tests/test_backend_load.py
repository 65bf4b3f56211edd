"""A bounded load test on 127.0.0.1: concurrent pre-annotations and corrections on several tasks (colour segmenter,
a real HTTP server in threads): every reply answered, each result belongs to its own task and object (by content),
and memory afterwards within a stated bound. The figures are printed (pytest -s shows them)."""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import requests
from werkzeug.serving import make_server

from decaf_backend.backend.results import masks_from_brush_items
from decaf_backend.backend.server import create_app
from tests.backend_helpers import COLOURS, colour_mask
from tests.test_backend_server import FRAMES_CONFIG, H, N, W, _click, _expected, _make, _task, media  # noqa: F401

TASKS = 8
CORRECTIONS_PER_TASK = 3
SESSION_BUDGET_MB = 2.0
MEMORY_SLACK_MB = 32.0  # allocator slack and thread stacks on top of the caches' budget


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def test_concurrent_prelabels_and_corrections_stay_correct_and_bounded(media: Any, tmp_path: Path) -> None:  # noqa: F811
    _, frames = media
    gy, gx = np.argwhere(colour_mask(frames[2], COLOURS["green"])).mean(axis=0)
    ry, rx = np.argwhere(colour_mask(frames[2], COLOURS["red"])).mean(axis=0)
    _, segmenter, runtime = _make(
        media, tmp_path, session_cache_mb=SESSION_BUDGET_MB, session_bytes_per_frame=1 << 16, store_mb=1.0,
        open_wait_s=300.0, interactive_wait_s=300.0,
    )  # fmt: skip
    server = make_server("127.0.0.1", 0, create_app(runtime), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/predict"
    colour = {tid: ("red", "green")[tid % 2] for tid in range(1, TASKS + 1)}
    # a task's corrections come after its own pre-annotation was answered (the annotator saw its masks) but run
    # alongside the other tasks' pre-annotations and corrections
    prelabeled = {tid: threading.Event() for tid in colour}

    def body(tid: int, context: Any = None) -> dict:
        task = _task(tid, prompt=f"the {colour[tid % 10]} thing")
        return {
            "tasks": [task],
            "project": "1.1",
            "label_config": FRAMES_CONFIG,
            "params": {"context": context},
        }

    def prelabel(tid: int) -> tuple[int, str, np.ndarray]:
        r = requests.post(url, json=body(tid), timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0], (
            f"task {tid}: no prediction; {runtime.jobs.stats()} {runtime.metrics.render({})}"
        )
        prelabeled[tid].set()
        return tid, "prelabel", masks_from_brush_items(r.json()["results"][0]["result"], N, H, W).to_array()

    def correct(tid: int, k: int) -> tuple[int, str, np.ndarray]:
        # red tasks add green with their click, green tasks remove green: the answer tells whose it is
        red = colour[tid % 10] == "red"
        click = _click(float(gx), float(gy), 2, positive=red)
        extra = [_click(float(rx), float(ry), 2, positive=red)] * k  # longer sequences
        assert prelabeled[tid].wait(120)
        r = requests.post(url, json=body(tid, {"result": [click, *extra]}), timeout=120)
        assert r.status_code == 200, r.text
        return tid, "correct", masks_from_brush_items(r.json()["results"][0]["result"], N, H, W).to_array()

    def run_round(offset: int) -> tuple[list, list, float]:
        tids = [offset + tid for tid in colour]
        for tid in tids:
            prelabeled.setdefault(tid, threading.Event())
        calls: list = [(correct, (tid, k)) for tid in tids for k in range(CORRECTIONS_PER_TASK)]
        random.Random(offset).shuffle(calls)
        calls = [(prelabel, (tid,)) for tid in tids] + calls  # a waiting correction never holds every thread
        t0 = time.perf_counter()
        with ThreadPoolExecutor(6) as pool:
            results = [f.result(timeout=300) for f in [pool.submit(fn, *a) for fn, a in calls]]
        return calls, results, time.perf_counter() - t0

    try:
        run_round(0)  # warm-up: imports, thread pools and allocator arenas of a first run
        gc.collect()
        before = rss_bytes()
        calls, results, elapsed = run_round(10)  # the measured round: other tasks, same load
        gc.collect()
        after = rss_bytes()
    finally:
        server.shutdown()
    expected = {
        ("red", "prelabel"): _expected(frames, "red"),
        ("red", "correct"): _expected(frames, "red", "green"),
        ("green", "prelabel"): _expected(frames, "green"),
        ("green", "correct"): np.zeros((N, H, W), bool),
    }
    assert len(results) == len(calls)
    for tid, kind, masks in results:
        np.testing.assert_array_equal(masks, expected[(colour[tid % 10], kind)], err_msg=f"task {tid} {kind}")
    assert segmenter.segment_calls == 2 * TASKS  # one DecAF pass per task, whoever asked first
    budget = int(SESSION_BUDGET_MB * 2**20)
    cached = runtime.sessions.cache.stats.bytes + runtime.segmentations.cache.stats.bytes
    grown = after - before
    print(
        f"\nload: {TASKS} tasks, {len(calls)} requests ({TASKS} pre-annotations, {len(calls) - TASKS} corrections) "
        f"in {elapsed:.1f} s on 6 client threads; caches {cached / 2**20:.2f} MB of a {SESSION_BUDGET_MB} MB "
        f"budget; store {runtime.store.bytes / 2**10:.0f} KB; process RSS +{grown / 2**20:.1f} MB over the measured "
        f"round (after a warm-up round) "
        f"(bound {SESSION_BUDGET_MB + MEMORY_SLACK_MB:.0f} MB)"
    )
    assert cached <= budget and runtime.store.bytes <= 2**20
    assert grown <= budget + MEMORY_SLACK_MB * 2**20
