"""video.py: probing, lazy random access (== sequential decode), frame folders, writing, clear errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from decaf_backend.errors import VideoError
from decaf_backend.overlay import write_video
from decaf_backend.video import (
    FrameFolderReader,
    PyAVVideoReader,
    VideoLimits,
    VideoReader,
    key_frame_indices,
    open_video,
    probe,
)
from tests.backend_helpers import audio_only_file, encode_frames

NUM_FRAMES, HEIGHT, WIDTH, FPS = 23, 72, 116, 12  # odd count, non-square


def square_frames(n: int, height: int, width: int) -> np.ndarray:
    """A bright square sliding right over a horizontal ramp; frame i's square starts at column 3*i."""
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    ramp = np.linspace(20, 120, width).astype(np.uint8)
    for i in range(n):
        frames[i] = ramp[None, :, None]
        x = (3 * i) % (width - 16)
        frames[i, height // 4 : height // 4 + 16, x : x + 16] = (230, 40, 200)
    return frames


# a short GOP gives several keyframes so random access has to seek
encode = partial(encode_frames, fps=FPS, gop=5)


def decode_all(path: Path) -> list[np.ndarray]:
    """Reference decode, independent of video.py: every frame in order, rgb24."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return square_frames(NUM_FRAMES, HEIGHT, WIDTH)


CODECS = {"mp4": "libx264", "webm": "libvpx-vp9", "mkv": "libx264", "mov": "libx264", "avi": "mpeg4"}


@pytest.fixture(scope="module", params=sorted(CODECS))
def video_file(request, tmp_path_factory, source) -> Path:
    codec = CODECS[request.param]
    frames = source if request.param != "webm" else square_frames(NUM_FRAMES, HEIGHT, WIDTH + 1)  # odd width
    return encode(tmp_path_factory.mktemp("v") / f"clip.{request.param}", frames, codec)


# ------------------------------------------------------------------------------------------------ probing


def test_probe_and_reader_report_count_fps_and_size(video_file):
    reference = decode_all(video_file)
    height, width = reference[0].shape[:2]
    info = probe(video_file)
    assert (info.num_frames, info.fps, info.width, info.height) == (len(reference), FPS, width, height)
    assert len(reference) == NUM_FRAMES
    assert info.source == str(video_file) and info.duration == pytest.approx(NUM_FRAMES / FPS)
    with open_video(video_file) as reader:
        assert isinstance(reader, VideoReader) and isinstance(reader, PyAVVideoReader)
        assert reader.info == info and len(reader) == NUM_FRAMES
        assert reader[0].shape == (height, width, 3) and reader[0].dtype == np.uint8


def test_webm_frame_count_is_counted_from_packets(tmp_path, source):
    path = encode(tmp_path / "clip.webm", source, "libvpx-vp9")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # webm stores no count: it must be counted
    assert probe(path).num_frames == len(open_video(path)) == NUM_FRAMES


# ------------------------------------------------------------------------------------------------ access


def test_random_access_is_pixel_identical_to_sequential_decode(video_file):
    reference = decode_all(video_file)
    reader = open_video(video_file, cache_bytes=1)  # a 2-frame cache: almost every access decodes
    assert [np.array_equal(a, b) for a, b in zip(reader.iter_frames(), reference)] == [True] * len(reference)
    order = np.random.default_rng(0).permutation(len(reference))
    for i in order:
        assert np.array_equal(reader[int(i)], reference[i]), f"frame {i} differs"
    backward = open_video(video_file, cache_bytes=1)
    for i in range(len(reference) - 1, -1, -1):
        assert np.array_equal(backward[i], reference[i]), f"frame {i} differs (backward walk)"
    assert np.array_equal(reader[-1], reference[-1])


def test_a_closed_reader_reopens_on_the_next_access(video_file):
    """The backend closes readers it evicts; a session still holding one must keep working."""
    reference = decode_all(video_file)
    reader = open_video(video_file)
    assert np.array_equal(reader[7], reference[7])
    reader.close()
    assert reader._container is None  # the file handle is released
    assert np.array_equal(reader[7], reference[7]) and np.array_equal(reader[2], reference[2])


def test_frames_come_in_presentation_order(video_file, source):
    """Each decoded frame is closest to the source frame of the same index (lossy codec, so no equality)."""
    reader = open_video(video_file)
    width = min(reader.info.width, source.shape[2])
    for i in (0, 7, 13, 22, 3):
        frame = reader[i][:, :width].astype(np.int32)
        errors = [np.abs(frame - s[:, :width].astype(np.int32)).mean() for s in source]
        assert int(np.argmin(errors)) == i and errors[i] < 4


def test_read_frames_any_order_with_repeats(video_file):
    reference = decode_all(video_file)
    reader = open_video(video_file, cache_bytes=1)
    wanted = [19, 2, 7, 2, 22, 0]
    got = reader.read_frames(wanted)
    assert len(got) == len(wanted)
    assert all(np.array_equal(g, reference[i]) for g, i in zip(got, wanted))


def test_access_is_lazy_and_cache_is_bounded(tmp_path, monkeypatch):
    frames = square_frames(60, 48, 64)
    path = encode(tmp_path / "long.mp4", frames, gop=10)
    reader = open_video(path, cache_bytes=48 * 64 * 3 * 4)  # room for 4 frames
    decoded = []
    original = reader._to_rgb
    monkeypatch.setattr(reader, "_to_rgb", lambda f: decoded.append(1) or original(f))
    reader[55]  # seeks to the keyframe at 50: only 50..55 are converted, not the whole video
    assert 1 <= len(decoded) <= 10
    reader[56]  # the running decoder continues: one more frame
    assert len(decoded) <= 11
    assert len(reader._cache) <= reader._cache.max_items == 4
    with pytest.raises(ValueError):  # cached frames are read-only: no caller can corrupt them for others
        reader[56][0, 0, 0] = 1
    with pytest.raises(IndexError):
        reader[60]


def test_one_frame_video_is_readable(tmp_path, source):
    path = encode(tmp_path / "one.mp4", source[:1])
    reader = open_video(path)
    assert len(reader) == probe(path).num_frames == 1
    assert np.array_equal(reader[0], decode_all(path)[0])
    assert len(list(reader.iter_frames())) == 1


def test_variable_frame_rate_timestamps(tmp_path, source):
    """Irregular gaps between frames: indices follow timestamps, not time × fps."""
    pts = np.cumsum([0] + [40, 10, 90, 60, 5, 120] * 4)[:NUM_FRAMES].tolist()
    path = encode(tmp_path / "vfr.mkv", source, pts=pts, gop=4)
    reference = decode_all(path)
    reader = open_video(path, cache_bytes=1)
    assert len(reader) == len(reference) == NUM_FRAMES
    for i in np.random.default_rng(1).permutation(NUM_FRAMES):
        assert np.array_equal(reader[int(i)], reference[i])


def test_rotated_clip_is_returned_as_players_show_it(tmp_path, source):
    path = encode(tmp_path / "rot.mp4", source[:6], rotation=90)
    upright = decode_all(path)  # PyAV gives the stored (unrotated) pixels
    reader = open_video(path)
    assert (reader.info.width, reader.info.height) == (HEIGHT, WIDTH)
    assert (probe(path).width, probe(path).height) == (HEIGHT, WIDTH)
    for i in (0, 5, 2):
        assert np.array_equal(reader[i], np.rot90(upright[i], 1))  # 90° counter-clockwise, as the matrix says


# ------------------------------------------------------------------------------------------------ folders


def test_frame_folder_sorted_by_name(tmp_path, source):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(source[:12]):
        Image.fromarray(frame).save(folder / f"frame{i}.png")  # unpadded: 10 and 11 must come after 9
    (folder / "notes.txt").write_text("not a frame")
    reader = open_video(folder, fps=5)
    assert isinstance(reader, FrameFolderReader) and isinstance(reader, VideoReader)
    info = reader.info
    assert (info.num_frames, info.fps, info.width, info.height) == (12, 5, WIDTH, HEIGHT)
    assert probe(folder).num_frames == 12
    assert all(np.array_equal(reader[i], source[i]) for i in (11, 0, 10, 2, 9))
    assert all(np.array_equal(a, b) for a, b in zip(reader.iter_frames(), source[:12]))
    assert all(np.array_equal(a, source[i]) for a, i in zip(reader.read_frames([10, 1]), [10, 1]))


def test_frame_folder_jpeg_and_size_mismatch(tmp_path, source):
    folder = tmp_path / "jpgs"
    folder.mkdir()
    Image.fromarray(source[0]).save(folder / "00000.jpg")
    Image.fromarray(source[1]).save(folder / "00001.jpeg")
    Image.fromarray(source[2][:40]).save(folder / "00002.png")
    reader = open_video(folder)
    assert len(reader) == 3 and reader[1].shape == (HEIGHT, WIDTH, 3)
    with pytest.raises(VideoError, match="one size"):
        reader[2]


# ------------------------------------------------------------------------------------------------ key frames


def test_key_frame_indices():
    assert key_frame_indices(31, 16) == list(range(0, 31, 2))  # linspace(0, 30, 16) is exact here
    for n in (17, 100, 1234):
        idx = key_frame_indices(n)
        assert idx == np.linspace(0, n - 1, 16).astype(int).tolist()
        assert len(idx) == 16 and idx[0] == 0 and idx[-1] == n - 1 and all(np.diff(idx) > 0)
    assert key_frame_indices(16) == list(range(16))
    assert key_frame_indices(5, 16) == [0, 1, 2, 3, 4]
    assert key_frame_indices(1) == [0] and key_frame_indices(0) == []
    assert key_frame_indices(10, num=4) == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        key_frame_indices(10, num=0)


# ------------------------------------------------------------------------------------------------ writing


def test_write_mp4_with_odd_size_and_gif(tmp_path):
    frames = square_frames(7, 45, 61)
    mp4 = write_video(tmp_path / "out" / "preview.mp4", iter(frames), fps=7.5)
    decoded = decode_all(mp4)
    assert len(decoded) == 7 and decoded[0].shape == (46, 62, 3)  # padded to even by repeating the edge
    assert probe(mp4).fps == pytest.approx(7.5)
    assert np.abs(decoded[3][:45, :61].astype(int) - frames[3].astype(int)).mean() < 6
    gif = write_video(tmp_path / "preview.gif", frames, fps=10)
    with Image.open(gif) as image:
        assert image.n_frames == 7 and image.size == (61, 45) and image.info["duration"] == 100
    webm = write_video(tmp_path / "preview.webm", frames, fps=10)
    assert len(decode_all(webm)) == 7 and decode_all(webm)[0].shape == (45, 61, 3)


def test_write_errors(tmp_path):
    with pytest.raises(VideoError, match="no frames"):
        write_video(tmp_path / "empty.mp4", [], fps=10)
    with pytest.raises(VideoError, match="one size"):
        write_video(tmp_path / "mixed.mp4", [np.zeros((8, 8, 3), np.uint8), np.zeros((10, 8, 3), np.uint8)])
    with pytest.raises(VideoError, match="cannot write"):
        write_video(tmp_path / "x.bmp", [np.zeros((8, 8, 3), np.uint8)])


# ------------------------------------------------------------------------------------------------ errors


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _no_frames(path: Path) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.mp4", "not found"),
        (lambda d: d / "empty_folder", "no frames"),
        (lambda d: _write(d / "zero.mp4", b""), "empty"),
        (lambda d: _write(d / "junk.mp4", bytes(range(256)) * 20), "cannot be read"),
        (lambda d: audio_only_file(d / "audio.mka"), "no video stream"),
        (lambda d: _no_frames(d / "none.avi"), "zero frames"),
    ],
    ids=["missing", "empty-folder", "zero-bytes", "garbage", "audio-only", "zero-frames"],
)
def test_unreadable_inputs_raise_video_error(tmp_path, make, message):
    (tmp_path / "empty_folder").mkdir()
    path = make(tmp_path)
    for read in (probe, open_video):
        with pytest.raises(VideoError, match=message):
            read(path)


def test_truncated_file_raises_video_error(tmp_path, source):
    data = encode(tmp_path / "full.mp4", source).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone
    with pytest.raises(VideoError, match="cut.mp4"):
        open_video(cut)


def test_limits(tmp_path, source, monkeypatch):
    path = encode(tmp_path / "clip.mp4", source)
    with pytest.raises(VideoError, match="23 frames, more than the limit of 10"):
        open_video(path, limits=VideoLimits(max_frames=10))
    with pytest.raises(VideoError, match="pixels"):
        probe(path, limits=VideoLimits(max_pixels=WIDTH * HEIGHT - 1))
    with pytest.raises(VideoError, match="MiB"):
        open_video(path, limits=VideoLimits(max_file_bytes=100))
    monkeypatch.setenv("DECAF_VIDEO_MAX_FRAMES", "5")
    with pytest.raises(VideoError, match="limit of 5"):
        open_video(path)
    assert len(open_video(path, limits=VideoLimits())) == NUM_FRAMES  # explicit limits win over the env
    monkeypatch.setenv("DECAF_VIDEO_MAX_FRAMES", "many")
    with pytest.raises(VideoError, match="not a number"):
        open_video(path)
