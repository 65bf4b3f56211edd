"""Session-wide fixtures: golden data, tiny random models (built once), synthetic videos encoded with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.golden import GOLDEN_DIR, golden_required, missing_golden_files, skip_or_fail

GOLDEN = GOLDEN_DIR


def pytest_sessionstart(session: pytest.Session) -> None:
    # .ci/run sets DECAF_REQUIRE_GOLDEN when the golden folder sits beside the checkout: then a missing
    # folder or any missing file a test reads fails the run instead of quietly skipping comparisons
    if not golden_required():
        return
    if not GOLDEN.is_dir():
        pytest.exit(f"DECAF_REQUIRE_GOLDEN is set but no golden data folder is at {GOLDEN}", returncode=1)
    missing = missing_golden_files(GOLDEN)
    if missing:
        pytest.exit(f"DECAF_REQUIRE_GOLDEN is set but {GOLDEN} lacks: {', '.join(missing)}", returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    """Under DECAF_REQUIRE_GOLDEN, a test that skips for want of golden data fails instead, whichever
    module's skip it was (a skipif marker, pytest.skip in a fixture or a test)."""
    outcome = yield
    report = outcome.get_result()
    if golden_required() and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if "golden" in reason.lower():
            report.outcome = "failed"
            report.longrepr = f"DECAF_REQUIRE_GOLDEN is set, but the test skipped: {reason}"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not GOLDEN.is_dir():
        skip_or_fail(f"golden data not found at {GOLDEN} (set DECAF_GOLDEN_DIR)")
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Qwen2.5-VL, Qwen2-VL and SAM2 checkpoints, made through the CLI's own builder."""
    from decaf_backend.tiny_models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def moving_disc_frames(num_frames: int, height: int, width: int, radius: int | None = None) -> np.ndarray:
    """A red disc moving left to right over a textured background: (N, H, W, 3) uint8."""
    radius = radius or max(4, min(height, width) // 6)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    rng = np.random.default_rng(0)
    background = (
        rng.integers(0, 40, (height, width, 3)) + np.linspace(40, 120, width)[None, :, None]
    ).astype(np.uint8)
    for i in range(num_frames):
        cx = radius + (width - 2 * radius) * i / max(1, num_frames - 1)
        cy = height / 2
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2
        frame = background.copy()
        frame[disc] = (220, 30, 30)
        frames[i] = frame
    return frames


def moving_disc_folder(folder: Path, num_frames: int, height: int, width: int) -> Path:
    """moving_disc_frames saved as 00000.png, 00001.png, ... in the new folder `folder`."""
    from PIL import Image

    folder.mkdir()
    for i, frame in enumerate(moving_disc_frames(num_frames, height, width)):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    return folder


def encode_video(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264") -> Path:
    """Encode frames with PyAV (yuv420p needs even sizes: the encoder gets the frame size rounded down)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            image = frame[: stream.height, : stream.width]
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mp4 with an odd number of frames and a non-square size (a moving red disc)."""
    path = tmp_path_factory.mktemp("videos") / "disc_odd.mp4"
    return encode_video(path, moving_disc_frames(21, 96, 160))


# the real Label Studio server, started once per test session (see tests/ls_server.py)
from tests.ls_fixtures import label_studio_fixture  # noqa: E402, F401
