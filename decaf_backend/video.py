"""Video input/output with PyAV: probing, lazy random-access frame readers (files and frame folders), previews.

Frames are decoded on demand only: a reader holds a small byte-bounded LRU of decoded frames, never the video.
Frame indices follow presentation order. A file reader first demuxes every packet once (no decoding) to learn
the exact frame count and each frame's timestamp, so random access by seeking gives the same pixels as a
sequential decode, also for variable-frame-rate files and containers that store no frame count (webm, mkv).
"""

from __future__ import annotations

import bisect
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import VideoError
from .lru import BoundedCache
from .types import VideoInfo

VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".mov", ".avi", ".mkv")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_CACHE_BYTES = 256 * 2**20
MAX_CACHED_FRAMES = 64
# frames larger than 8192x8192 are refused unless DECAF_VIDEO_MAX_PIXELS says otherwise: a forged header can
# declare 16000x16000, and decoding one such frame to RGB takes gigabytes
DEFAULT_MAX_PIXELS = 8192 * 8192


# ------------------------------------------------------------------------------------------------ limits


@dataclass(frozen=True)
class VideoLimits:
    """Optional caps on what a reader accepts (None = no cap); checked before any frame is decoded."""

    max_frames: int | None = None
    max_pixels: int | None = None  # width * height of one frame
    max_file_bytes: int | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> VideoLimits:
        """DECAF_VIDEO_MAX_FRAMES, DECAF_VIDEO_MAX_BYTES (unset or empty = no cap) and DECAF_VIDEO_MAX_PIXELS
        (unset or empty = DEFAULT_MAX_PIXELS)."""
        environ = os.environ if environ is None else environ

        def read(name: str, default: int | None = None) -> int | None:
            raw = environ.get(name, "").strip()
            if not raw:
                return default
            try:
                return int(float(raw))
            except ValueError:
                raise VideoError(f"{name}={raw!r} is not a number") from None

        return cls(
            read("DECAF_VIDEO_MAX_FRAMES"),
            read("DECAF_VIDEO_MAX_PIXELS", DEFAULT_MAX_PIXELS),
            read("DECAF_VIDEO_MAX_BYTES"),
        )

    def check_bytes(self, name: str, size: int) -> None:
        if self.max_file_bytes is not None and size > self.max_file_bytes:
            raise VideoError(
                f"{name} is {size / 2**20:.1f} MiB, more than the limit of {self.max_file_bytes / 2**20:.1f} MiB"
            )

    def check_frames(self, name: str, num_frames: int) -> None:
        if self.max_frames is not None and num_frames > self.max_frames:
            raise VideoError(f"{name} has {num_frames} frames, more than the limit of {self.max_frames}")

    def check_size(self, name: str, width: int, height: int) -> None:
        pixels = width * height
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise VideoError(
                f"{name} frames are {width}x{height} ({pixels} pixels), more than the limit of "
                f"{self.max_pixels} pixels (DECAF_VIDEO_MAX_PIXELS)"
            )

    def check_info(self, info: VideoInfo) -> None:
        name = Path(info.source).name or "the video"
        self.check_frames(name, info.num_frames)
        self.check_size(name, info.width, info.height)


# ------------------------------------------------------------------------------------------------ helpers


def key_frame_indices(n: int, num: int = 16) -> list[int]:
    """Spec §1: all frames when n <= num, else linspace(0, n-1, num) truncated to int."""
    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    if n <= 0:
        return []
    if n <= num:
        return list(range(n))
    return np.linspace(0, n - 1, num).astype(int).tolist()


def _natural_key(name: str) -> list[Any]:
    # "frame2.png" before "frame10.png"; zero-padded names sort as plain text would
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frame_files(folder: Path) -> list[Path]:
    """Image files (jpg/jpeg/png) of a folder, sorted by name (digit runs compared as numbers)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def as_rgb(frame: Any) -> np.ndarray:
    """A frame (numpy array or CPU/GPU tensor; gray, RGB or RGBA uint8) as a contiguous HxWx3 uint8 array."""
    if hasattr(frame, "detach"):  # a torch tensor, without importing torch here
        frame = frame.detach().cpu().numpy()
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise VideoError(f"frames must be uint8 arrays, got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise VideoError(f"frames must be HxWx3 arrays, got shape {array.shape}")
    return np.ascontiguousarray(array[:, :, :3])


def _cache_capacity(width: int, height: int, cache_bytes: int) -> int:
    return int(min(MAX_CACHED_FRAMES, max(2, cache_bytes // max(1, width * height * 3))))


class _FrameCache(BoundedCache[int, np.ndarray]):
    """Decoded frames, least recently used out; entries are read-only so no caller corrupts what others read."""

    def put(self, key: int, value: np.ndarray) -> np.ndarray:
        value.flags.writeable = False
        return super().put(key, value)


# ------------------------------------------------------------------------------------------------ readers


class VideoReader:
    """Lazy frame sequence: `len()`, `[i]` -> HxWx3 uint8 RGB (read-only), `iter_frames()`, `read_frames()`.

    Base class of the file reader (PyAV) and the frame-folder reader; thread-safe.
    """

    info: VideoInfo

    def __init__(self, info: VideoInfo, cache_bytes: int) -> None:
        self.info = info
        self._cache = _FrameCache(max_items=_cache_capacity(info.width, info.height, cache_bytes))
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self.info.num_frames

    def _index(self, index: Any) -> int:
        try:
            i = int(index)
        except TypeError:
            raise TypeError(f"frame index must be an integer, got {type(index).__name__}") from None
        n = self.info.num_frames
        if not -n <= i < n:
            raise IndexError(f"frame {i} outside 0..{n - 1}")
        return i % n

    def __getitem__(self, index: int) -> np.ndarray:
        i = self._index(index)
        with self._lock:
            frame = self._cache.get(i)
            return frame if frame is not None else self._load(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.iter_frames()

    def read_frames(self, indices: Iterable[int]) -> list[np.ndarray]:
        """Frames at `indices` (any order, repeats allowed), read in one forward pass over the sorted set."""
        wanted = [self._index(i) for i in indices]
        got: dict[int, np.ndarray] = {}
        for i in sorted(set(wanted)):
            got[i] = self[i]
        return [got[i] for i in wanted]

    def iter_frames(self) -> Iterator[np.ndarray]:
        """Every frame in order, decoded one at a time (fresh writable arrays, the cache is not touched)."""
        for i in range(len(self)):
            yield np.array(self[i])

    def close(self) -> None:
        self._cache.clear()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        i = self.info
        return (
            f"{type(self).__name__}({i.source!r}, {i.num_frames} frames, {i.width}x{i.height}, {i.fps:g} fps)"
        )


class FrameFolderReader(VideoReader):
    """A folder of jpg/png frames, sorted by name; every frame must have the size of the first."""

    def __init__(self, folder: Path, files: Sequence[Path], fps: float, cache_bytes: int) -> None:
        self.files = list(files)
        with _open_image(self.files[0]) as img:
            width, height = img.size
        super().__init__(VideoInfo(len(self.files), float(fps), width, height, str(folder)), cache_bytes)

    def _read(self, index: int) -> np.ndarray:
        path = self.files[index]
        with _open_image(path) as img:
            frame = np.asarray(img.convert("RGB"))
        if frame.shape[:2] != (self.info.height, self.info.width):
            raise VideoError(
                f"frame {path.name} is {frame.shape[1]}x{frame.shape[0]}, but the first frame is "
                f"{self.info.width}x{self.info.height}: all frames of a folder must have one size"
            )
        return frame

    def _load(self, index: int) -> np.ndarray:
        return self._cache.put(index, self._read(index))

    def iter_frames(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self._read(i)


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError) as exc:
        raise VideoError(f"cannot read frame image {path}: {exc}") from exc


@dataclass(frozen=True)
class _PacketIndex:
    """Presentation timestamps of all frames (sorted) and the frame indices of keyframes."""

    pts: np.ndarray  # (N,) int64
    keyframes: list[int]  # sorted presentation indices
    seekable: bool  # False when timestamps are missing or repeated: then decode from the start

    def frame_of(self, pts: int | None) -> int | None:
        if pts is None:
            return None
        i = int(np.searchsorted(self.pts, pts))
        return i if i < len(self.pts) and self.pts[i] == pts else None

    def keyframe_before(self, index: int) -> int:
        j = bisect.bisect_right(self.keyframes, index) - 1
        return self.keyframes[j] if j >= 0 else 0


class PyAVVideoReader(VideoReader):
    """A video file decoded lazily with PyAV: seeks to the keyframe before a wanted frame, decodes forward.

    Sequential access (SAM2 forward propagation) continues the running decoder without seeking; backward
    access is served from the frames cached on the way to the last wanted frame.
    """

    def __init__(
        self, path: Path, cache_bytes: int = DEFAULT_CACHE_BYTES, limits: VideoLimits | None = None
    ) -> None:
        self.path = path
        limits = limits or VideoLimits()
        with _open_container(path) as container:
            stream = _video_stream(container, path)
            # the declared size and the frame count are checked before any frame is decoded
            limits.check_size(path.name, stream.codec_context.width, stream.codec_context.height)
            fps = _stream_fps(stream)
            self._index_table = _build_index(container, stream, path)
            limits.check_frames(path.name, len(self._index_table.pts))
        self._container: Any = None
        self._decoder: Iterator[Any] | None = None
        self._pos: int | None = None  # presentation index of the frame the running decoder gave last
        self._rotation = 0
        try:
            first = self._decode_first()
        except BaseException:
            self.close_container()
            raise
        height, width = first.shape[:2]
        info = VideoInfo(len(self._index_table.pts), fps, width, height, str(path))
        super().__init__(info, cache_bytes)
        self._cache.put(0, first)

    # -- decoding -----------------------------------------------------------------------------------------
    def _open(self) -> None:
        if self._container is None:
            self._container = _open_container(self.path)
            stream = _video_stream(self._container, self.path)
            stream.thread_type = "AUTO"
        self._decoder, self._pos = None, None

    def _stream(self) -> Any:
        return self._container.streams.video[0]

    def _to_rgb(self, frame: Any) -> np.ndarray:
        array = frame.to_ndarray(format="rgb24")
        k = (self._rotation // 90) % 4
        # the display matrix says how players show the video (phone clips): give frames as they are seen
        return np.ascontiguousarray(np.rot90(array, k)) if k else array

    def _decode_first(self) -> np.ndarray:
        self._open()
        self._decoder = self._container.decode(self._stream())
        try:
            frame = next(self._decoder)
        except StopIteration:
            raise VideoError(f"{self.path.name}: no frame of the video stream can be decoded") from None
        except Exception as exc:
            raise VideoError(f"{self.path.name} is corrupt: cannot decode its first frame ({exc})") from exc
        rotation = getattr(frame, "rotation", 0) or 0
        self._rotation = int(round(rotation / 90.0)) * 90 % 360
        self._pos = 0
        return self._to_rgb(frame)

    def _seek(self, keyframe: int) -> None:
        self._open()
        table = self._index_table
        try:
            if table.seekable and keyframe > 0:
                self._container.seek(
                    int(table.pts[keyframe]), stream=self._stream(), backward=True, any_frame=False
                )
            else:
                self._container.seek(0, backward=True)
        except Exception as exc:
            raise VideoError(f"{self.path.name}: seeking failed ({exc})") from exc
        self._decoder = self._container.decode(self._stream())
        # from the start, frames can be counted; after a real seek, timestamps tell where the decoder is
        self._pos = -1 if not table.seekable or keyframe == 0 else None

    def _next_frame(self, wanted: int) -> tuple[int, np.ndarray] | None:
        """Decode the next frame of the running decoder: (presentation index, rgb), None at the end."""
        assert self._decoder is not None
        try:
            frame = next(self._decoder)
        except StopIteration:
            return None
        except Exception as exc:
            near = wanted if self._pos is None else self._pos + 1
            raise VideoError(
                f"{self.path.name} is corrupt near frame {near}: the decoder refused its data ({exc})"
            ) from exc
        index = self._index_table.frame_of(frame.pts) if self._index_table.seekable else None
        if index is None:  # no usable timestamp: count frames from a known position
            index = 0 if self._pos is None else self._pos + 1
        self._pos = index
        return index, self._to_rgb(frame)

    def _load(self, index: int) -> np.ndarray:
        keyframe = self._index_table.keyframe_before(index)
        keep_from = (
            index - (self._cache.max_items or 1) + 1
        )  # cache what leads up to the frame, for backward walks
        attempts = [keyframe] if keyframe == 0 else [keyframe, 0]
        if self._decoder is not None and self._pos is not None and keyframe - 1 <= self._pos < index:
            attempts.insert(0, -1)  # the running decoder reaches the frame no later than a seek would
        for start in attempts:
            if start >= 0:
                self._seek(start)
            while (item := self._next_frame(index)) is not None:
                i, frame = item
                if i == index:
                    return self._cache.put(i, frame)
                if i > index:
                    break  # a seek landed after the frame: try again from an earlier point
                if i >= keep_from:
                    self._cache.put(i, frame)
        raise VideoError(f"{self.path.name}: frame {index} of {len(self)} cannot be decoded")

    def iter_frames(self) -> Iterator[np.ndarray]:
        with _open_container(self.path) as container:
            stream = _video_stream(container, self.path)
            stream.thread_type = "AUTO"
            count = 0
            try:
                for frame in container.decode(stream):
                    if count >= len(self):
                        break
                    count += 1
                    yield self._to_rgb(frame)
            except av_errors() as exc:
                raise VideoError(
                    f"{self.path.name} is corrupt near frame {count}: the decoder refused its data ({exc})"
                ) from exc

    def close_container(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._decoder, self._pos = None, None, None

    def close(self) -> None:
        with self._lock:
            super().close()
            self.close_container()

    def __del__(self) -> None:
        try:
            if self._container is not None:
                self._container.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass


# ------------------------------------------------------------------------------------------------ PyAV plumbing


def av_errors() -> tuple[type[BaseException], ...]:
    import av

    return (av.error.FFmpegError, OSError, ValueError)


def _check_file(path: Path, limits: VideoLimits) -> None:
    if not path.exists():
        raise VideoError(f"video not found: {path}")
    if not path.is_file():
        raise VideoError(f"not a video file or folder of frames: {path}")
    size = path.stat().st_size
    if size == 0:
        raise VideoError(f"{path.name} is empty (0 bytes): not a video")
    limits.check_bytes(path.name, size)


def _open_container(path: Path) -> Any:
    import av

    try:
        return av.open(str(path), mode="r")
    except av.error.EOFError as exc:  # headers only: what a zero-length recording or a cut-off upload gives
        raise VideoError(
            f"{path.name} ends before any frame: a zero-length or truncated video ({exc})"
        ) from exc
    except av_errors() as exc:
        if _mp4_index_missing(path):
            raise VideoError(
                f"{path.name} is truncated: its frames are there but its index (the moov box, written last) is "
                "missing: an interrupted recording or upload"
            ) from exc
        raise VideoError(
            f"{path.name} cannot be read as a video (unsupported or corrupt file): {exc}"
        ) from exc


def _mp4_index_missing(path: Path) -> bool:
    """An MP4/MOV whose top-level boxes run past the end of the file without a moov box: cut off."""
    size, seen, offset = path.stat().st_size, set(), 0
    with open(path, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1 and len(header) == 16:
                length = int.from_bytes(header[8:16], "big")
            if length < 8 or not kind.isalnum() and kind != b"free":
                return False  # not an ISO media file
            seen.add(kind)
            offset += length
    return b"ftyp" in seen and b"moov" not in seen and offset > size


def _video_stream(container: Any, path: Path) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        if not kinds:  # muxers drop tracks without samples: this is an empty (zero-frame) recording
            raise VideoError(f"{path.name} has no streams at all: a zero-length or empty video")
        raise VideoError(f"{path.name} has no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def _stream_fps(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _count_packets(container: Any, stream: Any, path: Path) -> tuple[list[int | None], list[bool], int]:
    """Presentation timestamps and keyframe flags of the frames, and the number of packets read (discarded too)."""
    pts: list[int | None] = []
    keys: list[bool] = []
    read = 0
    try:
        for packet in container.demux(stream):
            if not packet.size:  # flush packets
                continue
            read += 1
            if packet.is_discard:  # frames an edit list cuts away
                continue
            pts.append(packet.pts if packet.pts is not None else packet.dts)
            keys.append(bool(packet.is_keyframe))
    except av_errors() as exc:
        raise VideoError(f"{path.name} is corrupt: reading its packets failed ({exc})") from exc
    return pts, keys, read


def _check_complete(container: Any, stream: Any, path: Path, pts: list[int | None], read: int) -> None:
    """A cut-off or damaged file still opens: compare what its header promises with the packets it holds."""
    declared_frames = int(stream.frames or 0)
    if declared_frames and read < declared_frames:
        raise VideoError(
            f"{path.name} is truncated or corrupt: its header lists {declared_frames} frames but the file holds "
            f"data for {read}"
        )
    # containers without a frame count (webm, mkv): the declared duration against the packets' time span
    if stream.duration is not None and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    elif container.duration is not None and len(container.streams) == 1:
        declared = container.duration / 1_000_000  # microseconds; one stream, so it is the video's
    else:
        return
    rate = _stream_fps(stream)
    known = [p for p in pts if p is not None]
    if declared <= 0 or not rate or not known or not stream.time_base:
        return
    covered = float((max(known) - min(known)) * stream.time_base) + 1 / rate
    if covered < declared / 2 and declared - covered > 2 / rate:
        raise VideoError(
            f"{path.name} is truncated or corrupt: its frames cover {covered:.2f} s of the {declared:.2f} s its "
            "header declares"
        )


def _build_index(container: Any, stream: Any, path: Path) -> _PacketIndex:
    pts, keys, read = _count_packets(container, stream, path)
    if not pts:
        raise VideoError(f"{path.name} has a video stream with zero frames")
    _check_complete(container, stream, path, pts, read)
    seekable = all(p is not None for p in pts) and len(set(pts)) == len(pts)
    if not seekable:
        return _PacketIndex(np.arange(len(pts), dtype=np.int64), [0], False)
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    sorted_pts = np.asarray(pts, dtype=np.int64)[order]
    keyframes = sorted(int(np.searchsorted(sorted_pts, p)) for p, k in zip(pts, keys) if k)
    return _PacketIndex(sorted_pts, keyframes or [0], True)


# ------------------------------------------------------------------------------------------------ entry points


def open_video(
    path_or_dir: str | Path,
    limits: VideoLimits | None = None,
    fps: float | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> VideoReader:
    """A lazy reader of a video file (mp4/webm/mov/avi/mkv, anything FFmpeg reads) or a folder of frames.

    limits: caps checked before decoding (default: VideoLimits.from_env()). fps: the frame rate of a folder
    (files use the container's). Raises VideoError naming the problem.
    """
    path = Path(path_or_dir).expanduser()
    limits = VideoLimits.from_env() if limits is None else limits
    if path.is_dir():
        files = list_frame_files(path)
        if not files:
            raise VideoError(
                f"folder {path} holds no frames ({'/'.join(s[1:] for s in FRAME_SUFFIXES)} files)"
            )
        limits.check_bytes(path.name, sum(f.stat().st_size for f in files))
        reader: VideoReader = FrameFolderReader(path, files, fps or 0.0, cache_bytes)
        limits.check_info(reader.info)
        return reader
    _check_file(path, limits)
    reader = PyAVVideoReader(path, cache_bytes, limits)
    try:
        limits.check_info(reader.info)  # the size players show (rotation) and what the first frame really has
    except VideoError:
        reader.close()
        raise
    return reader


def probe(path: str | Path, limits: VideoLimits | None = None) -> VideoInfo:
    """Frame count, fps and frame size: the `info` of the reader `open_video` makes (one code path, so the two
    never disagree), which costs one packet pass without decoding plus the first frame."""
    with open_video(path, limits, cache_bytes=1) as reader:
        return reader.info
