"""Task media: download with the sdk (Label Studio uploads, local-files storage, cloud and plain URLs) and open it.

Downloads go through label-studio-sdk's `get_local_path` (it knows every Label Studio URL form and its auth), with a
requests session that adds a timeout and refuses files over the size limit. A frame-sequence task's frames are
linked into one folder per task (in list order, so `item_index` i is frame i) and opened as a frame sequence.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import get_local_path, http_session
from PIL import Image

from ..types import VideoInfo
from .errors import MediaError
from .schema import Schema
from .settings import Settings

FOLDER_SUFFIXES = (".jpg", ".jpeg", ".png")  # what the frame-folder reader reads; others are converted


@dataclass
class Media:
    """An opened task medium: `reader` is a decaf_backend.video VideoReader (lazy, random access)."""

    key: str  # stable id of the task's media (hash of its URLs)
    kind: str  # "frames" | "video"
    path: Path
    reader: Any
    info: VideoInfo


def media_key(schema: Schema, task: Mapping[str, Any]) -> str:
    value = (task.get("data") or {}).get(schema.data_key)
    return hashlib.sha1(json.dumps([schema.layout, value], sort_keys=True).encode()).hexdigest()[:16]


class _LimitedSession(requests.Session):
    """Every GET gets a timeout and is read here, in chunks, refusing more than `max_bytes`."""

    def __init__(self, max_bytes: int, timeout: float) -> None:
        super().__init__()
        self.max_bytes, self.timeout = max_bytes, timeout

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["stream"] = True
        kwargs.setdefault("timeout", self.timeout)
        response = super().get(url, **kwargs)
        if not response.ok:
            return response  # the sdk raises HTTPError with the status
        declared = int(response.headers.get("Content-Length") or 0)
        if declared > self.max_bytes:
            response.close()
            raise MediaError(
                f"{_short(url)} is {declared / 2**20:.0f} MB, over the {self.max_bytes / 2**20:.0f} MB limit"
            )
        data = bytearray()
        for chunk in response.iter_content(1 << 20):
            data.extend(chunk)
            if len(data) > self.max_bytes:
                response.close()
                raise MediaError(f"{_short(url)} is over the {self.max_bytes / 2**20:.0f} MB limit")
        response._content = bytes(data)  # the sdk reads .content
        response._content_consumed = True
        return response


def _convert_to_png(src: Path, dest: Path, url: str) -> None:
    try:
        with Image.open(src) as img:
            img.convert("RGB").save(dest)
    except (OSError, ValueError) as exc:
        raise MediaError(f"frame {_short(url)} is not a readable image: {exc}") from exc


def _short(url: Any) -> str:
    text = url.decode() if isinstance(url, bytes) else str(url)
    return text if len(text) < 120 else text[:117] + "..."


class MediaFetcher:
    """Downloads and opens task media; keeps the last few opened readers (opening a video probes it)."""

    def __init__(
        self, settings: Settings, open_video: Callable[[str | Path], Any] | None = None, keep: int = 8
    ):
        self.settings = settings
        self.cache_dir = settings.model_dir / "media"
        self._open_video = open_video
        self._readers: OrderedDict[str, Media] = OrderedDict()
        self._lock = threading.Lock()
        self._keep = keep

    def open_video(self, path: str | Path) -> Any:
        if self._open_video is None:
            from ..video import open_video  # the core's reader; imported late so the server starts without it

            self._open_video = open_video
        return self._open_video(path)

    def open(
        self, task: Mapping[str, Any], schema: Schema, credentials: tuple[str, str] | None = None
    ) -> Media:
        key = media_key(schema, task)
        with self._lock:
            if key in self._readers:
                self._readers.move_to_end(key)
                return self._readers[key]
        media = self._open_uncached(task, schema, key, credentials)
        with self._lock:
            self._readers[key] = media
            while len(self._readers) > self._keep:
                # release the file handle and decoded frames; a live session still holding the reader
                # reopens the file on its next access
                _, evicted = self._readers.popitem(last=False)
                close = getattr(evicted.reader, "close", None)
                if close is not None:
                    close()
        return media

    def _open_uncached(
        self, task: Mapping[str, Any], schema: Schema, key: str, credentials: tuple[str, str] | None
    ) -> Media:
        data = task.get("data")
        if not isinstance(data, Mapping) or schema.data_key not in data:
            what = "a list of frame URLs" if schema.layout == "frames" else "a video URL"
            raise MediaError(
                f"task {task.get('id')} has no '{schema.data_key}' field ({what}): not a video task"
            )
        value = data[schema.data_key]
        task_id = task.get("id")
        if schema.layout == "frames":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise MediaError(
                    f"task {task_id}: '{schema.data_key}' must be a non-empty list of frame URLs"
                )
            if len(value) > self.settings.max_frames:
                raise MediaError(
                    f"task {task_id} has {len(value)} frames, over the limit of {self.settings.max_frames}"
                )
            path = self._frames_dir(value, key, task_id, credentials)
            kind = "frames"
        else:
            if not isinstance(value, str) or not value:
                raise MediaError(f"task {task_id}: '{schema.data_key}' must be a video URL, not {value!r}")
            path = Path(self.download(value, task_id, credentials))
            kind = "video"
        reader = self.open_video(path)
        info = reader.info
        self._check_limits(info, task_id)
        return Media(key, kind, path, reader, info)

    def _check_limits(self, info: VideoInfo, task_id: Any) -> None:
        if info.num_frames < 1:
            raise MediaError(f"task {task_id}: the media has no frames")
        if info.num_frames > self.settings.max_frames:
            raise MediaError(
                f"task {task_id}: {info.num_frames} frames, over the limit of {self.settings.max_frames}"
            )
        if info.duration > self.settings.max_video_seconds:
            raise MediaError(
                f"task {task_id}: the video lasts {info.duration:.0f} s, over the {self.settings.max_video_seconds:.0f} s limit"
            )

    def _frames_dir(
        self, urls: list[str], key: str, task_id: Any, credentials: tuple[str, str] | None
    ) -> Path:
        target = self.cache_dir / "frames" / key
        done = target / ".complete"
        if done.exists():
            return target
        tmp = target.with_name(f"{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            width = max(6, len(str(len(urls))))
            for i, url in enumerate(urls):
                local = Path(self.download(url, task_id, credentials))
                stem = tmp / f"{i:0{width}d}"
                if local.suffix.lower() in FOLDER_SUFFIXES:
                    try:
                        os.link(local, stem.with_suffix(local.suffix.lower()))
                    except OSError:
                        shutil.copyfile(local, stem.with_suffix(local.suffix.lower()))
                else:
                    _convert_to_png(local, stem.with_suffix(".png"), url)
            (tmp / ".complete").touch()
            if not done.exists():  # a finished folder may already be read by another thread's reader
                shutil.rmtree(target, ignore_errors=True)  # a leftover without .complete
                try:
                    tmp.rename(target)
                except OSError:  # another thread won the race: its folder is as good as ours
                    pass
        finally:  # a failed download leaves no partial folder behind
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def download(self, url: str, task_id: Any = None, credentials: tuple[str, str] | None = None) -> str:
        """Local path of a task URL (cached under MODEL_DIR/media); MediaError with the reason when it fails."""
        host, token = credentials or (self.settings.label_studio_url, self.settings.label_studio_api_key)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        session = _LimitedSession(int(self.settings.max_media_mb * 2**20), self.settings.download_timeout_s)
        try:
            with http_session(session):
                return get_local_path(
                    url,
                    cache_dir=str(self.cache_dir),
                    hostname=host or None,
                    access_token=token or None,
                    task_id=task_id,
                )
        except MediaError:
            raise
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            hint = " (check LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
            raise MediaError(f"cannot download {_short(url)}: HTTP {status}{hint}") from exc
        except requests.RequestException as exc:
            raise MediaError(
                f"cannot reach the media server for {_short(url)} ({type(exc).__name__}): {exc}"
            ) from exc
        except (FileNotFoundError, ValueError) as exc:
            raise MediaError(f"cannot resolve {_short(url)}: {exc}") from exc
        finally:
            session.close()
