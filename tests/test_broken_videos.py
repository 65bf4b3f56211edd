"""A corpus of broken and unusual videos made here with PyAV and bytes: each gives its own clear error, or the right
frames where the video is valid, through the core reader and through the server (which keeps serving and leaves
no temporary file behind)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from decaf_backend.backend.settings import Settings
from decaf_backend.errors import VideoError
from decaf_backend.video import open_video, probe
from tests.backend_helpers import (
    FakeLabelStudio,
    audio_only_file,
    colour_client,
    disc_and_square_frames,
    encode_frames,
)

N, H, W = 12, 48, 64
VIDEO_CONFIG = (
    (Path(__file__).resolve().parents[1] / "label_config" / "video_tracks.xml")
    .read_text()
    .replace('framerate="25.0"', 'framerate="10.0"')
)


@dataclass(frozen=True)
class Case:
    name: str  # file name in the corpus
    error: str | None = None  # regex of the error opening it gives; None: it opens
    read_error: str | None = None  # regex of the error reading its frames gives (it opens)
    frames: int = N
    rotation: int = 0


CASES = [
    Case("zero.mp4", error=r"zero\.mp4 is empty \(0 bytes\)"),
    Case("truncated.mp4", error=r"truncated\.mp4 is truncated: .*index \(the moov box"),
    Case(
        "truncated_faststart.mp4",
        error=r"truncated_faststart\.mp4 is truncated or corrupt: its header lists 12",
    ),
    Case("text.mp4", error=r"text\.mp4 cannot be read as a video"),
    Case("mp4_named.webm"),  # wrong extension: FFmpeg reads the content, not the name
    Case("audio_only.mka", error=r"audio_only\.mka has no video stream \(streams: audio\)"),
    Case("one_frame.mp4", frames=1),
    Case("huge_header.avi", error=r"huge_header\.avi frames are 16000x16000 .*more than the limit"),
    Case("variable_rate.mkv"),
    Case("rotated.mp4", rotation=90),
    Case("corrupt_midstream.mp4", read_error=r"corrupt_midstream\.mp4 is corrupt near frame \d+"),
    Case("ten_bit.mp4"),
]


def _huge_header(path: Path, frames: np.ndarray) -> Path:
    """MJPEG in AVI whose frame headers (JPEG SOF) and stream header say 16000x16000: decoding one such frame to
    RGB would take over a gigabyte."""
    data = bytearray(encode_frames(path, frames[:3], "mjpeg", pix_fmt="yuvj420p").read_bytes())
    for match in re.finditer(b"\xff\xc0", bytes(data)):  # SOF0: length, precision, height, width
        data[match.start() + 5 : match.start() + 9] = (16000).to_bytes(2, "big") * 2
    strf = data.index(b"strf")
    data[strf + 12 : strf + 20] = (16000).to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))
    return path


def _corrupt_midstream(path: Path, frames: np.ndarray) -> Path:
    """Random bytes over the 7th packet (not a keyframe): the file opens, that stretch cannot be decoded."""
    encode_frames(path, frames, faststart=True)
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size, p.is_keyframe) for p in container.demux(video=0) if p.size]
    pos, size, key = packets[6]
    assert not key
    data = bytearray(path.read_bytes())
    data[pos : pos + size] = np.random.default_rng(6).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    frames = disc_and_square_frames(N, H, W)
    (root / "zero.mp4").write_bytes(b"")
    full = encode_frames(root / "full.mp4", frames).read_bytes()  # moov box written last
    (root / "truncated.mp4").write_bytes(full[: len(full) // 2])
    faststart = encode_frames(root / "faststart.mp4", frames, faststart=True).read_bytes()
    (root / "truncated_faststart.mp4").write_bytes(faststart[: len(faststart) // 2])
    (root / "text.mp4").write_text("this is a text file with a video's name\n" * 40)
    (root / "mp4_named.webm").write_bytes(full)
    audio_only_file(root / "audio_only.mka")
    encode_frames(root / "one_frame.mp4", frames[:1])
    _huge_header(root / "huge_header.avi", frames)
    encode_frames(
        root / "variable_rate.mkv",
        frames,
        pts=np.cumsum([0, 40, 10, 90, 60, 5, 120, 30, 70, 15, 100, 50]).tolist(),
    )
    encode_frames(root / "rotated.mp4", frames, rotation=90)
    _corrupt_midstream(root / "corrupt_midstream.mp4", frames)
    encode_frames(root / "ten_bit.mp4", frames, pix_fmt="yuv420p10le")
    (root / "full.mp4").unlink()
    (root / "faststart.mp4").unlink()
    return root


def _reference(path: Path, rotation: int) -> list[np.ndarray]:
    """Every frame by a plain sequential PyAV decode, independent of video.py (turned as players show it)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return [np.rot90(f, rotation // 90) for f in frames]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_core_reader(corpus: Path, case: Case) -> None:
    path = corpus / case.name
    if case.error:
        for read in (open_video, probe):
            with pytest.raises(VideoError, match=case.error):
                read(path)
        return
    reader = open_video(path, cache_bytes=1)
    assert probe(path) == reader.info and len(reader) == case.frames
    if case.read_error:
        with pytest.raises(VideoError, match=case.read_error):
            list(reader.iter_frames())
        with pytest.raises(VideoError, match=case.read_error):
            [reader[i] for i in range(len(reader))]
        assert reader[0].shape == (H, W, 3)  # the frames before the damage still read
        return
    reference = _reference(path, case.rotation)
    assert len(reference) == case.frames
    for i in np.random.default_rng(0).permutation(case.frames):
        assert np.array_equal(reader[int(i)], reference[i]), f"frame {i}"
    if case.name == "ten_bit.mp4":
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
        # the same picture as the 8-bit source (lossy; a 10-bit sample misread as 8-bit would be far off)
        assert np.abs(reader[3].astype(int) - disc_and_square_frames(N, H, W)[3]).mean() < 8


@pytest.fixture(scope="module")
def served(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    fake = FakeLabelStudio(corpus)
    model_dir = tmp_path_factory.mktemp("broken_model_dir")
    settings = Settings(
        label_studio_url=fake.url,
        label_studio_api_key=fake.token,
        model_dir=model_dir,
        preload=False,
        open_wait_s=30.0,
        batch_wait_s=30.0,
        interactive_wait_s=30.0,
    )
    yield colour_client(settings), model_dir
    fake.close()


def _task(tid: int, name: str) -> dict:
    return {"id": tid, "data": {"video": f"/data/local-files/?d={name}", "prompt": "the red disc"}}


def _box(frame: int) -> dict:
    key = {
        "frame": frame,
        "enabled": True,
        "rotation": 0,
        "x": 10.0,
        "y": 10.0,
        "width": 20.0,
        "height": 20.0,
    }
    return {"id": "b1", "type": "videorectangle", "from_name": "box", "to_name": "video",
            "value": {"sequence": [key], "framesCount": N}}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_through_the_server(served: Any, case: Case) -> None:
    client, model_dir = served
    tid = 100 + CASES.index(case)
    body = {"tasks": [_task(tid, case.name), _task(tid + 50, "one_frame.mp4")], "label_config": VIDEO_CONFIG}
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200
    result, healthy = reply.get_json()["results"]
    assert healthy["result"][0]["value"]["framesCount"] == 1  # the other task of the batch is served
    correction = client.post(
        "/predict", json=dict(body, tasks=body["tasks"][:1], params={"context": {"result": [_box(1)]}})
    )
    problem = case.error or case.read_error
    if problem:
        assert not (result or {}).get("result")
        assert correction.status_code == 422 and re.search(problem, correction.get_json()["error"])
    else:
        (track,) = [r for r in result["result"] if r["type"] == "videorectangle"]  # besides the review text
        assert track["value"]["framesCount"] == case.frames
        assert len(track["value"]["sequence"]) >= case.frames  # the red disc is on every frame
        assert correction.status_code == 200
    assert client.get("/health").get_json()["status"] == "UP"
    partial = [p for p in model_dir.rglob("*") if p.name.endswith((".part", ".tmp", ".download"))]
    assert partial == []
