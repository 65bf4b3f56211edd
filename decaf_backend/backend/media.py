"""Task media: fetch it under the trust policy (media_policy.py), cache it on disk (media_cache.py) and open it.

Label Studio's URL forms (uploads, local-files storage, cloud storage through its presign route, plain http(s))
are resolved by `MediaPolicy.plan`; downloads stream to disk under the size limit (downloads.py). A
frame-sequence task's frames go into one folder per task (in list order, so `item_index` i is frame i) and are
opened as a frame sequence.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from PIL import Image

from ..lru import BoundedCache
from ..types import VideoInfo
from ..video import VideoLimits
from .downloads import describe_failure, fetch
from .errors import MediaError
from .media_cache import MediaDiskCache
from .media_policy import MediaPolicy, parse_prefixes, redact_url
from .schema import Schema
from .settings import Settings

FOLDER_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}  # what the frame-folder reader reads; others are converted


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


def _as_folder_frame(src: Path, stem: Path, url: str) -> None:
    """Keep a jpg/png frame as it is; convert any other image to png; refuse what is not an image or too large."""
    try:
        img = Image.open(src)  # reads the header only
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"frame {redact_url(url)} is not a readable image: {exc}") from exc
    with img:
        # checked before any pixel is decoded: a small file can declare a huge image
        VideoLimits.from_env().check_size(f"frame {redact_url(url)}", img.width, img.height)
        suffix = FOLDER_FORMATS.get(img.format or "")
        if suffix is None:
            try:
                img.convert("RGB").save(stem.with_suffix(".png"))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise MediaError(f"frame {redact_url(url)} is not a readable image: {exc}") from exc
    if suffix is None:
        src.unlink()
    else:
        os.replace(src, stem.with_suffix(suffix))


def _file_name(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    name = (query.get("d") or query.get("filepath") or [parts.path])[-1].rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[-60:].lstrip(".") or "media"


class MediaFetcher:
    """Fetches and opens task media; keeps the last few opened readers (opening a video probes it)."""

    def __init__(
        self, settings: Settings, open_video: Callable[[str | Path], Any] | None = None, keep: int = 8
    ):
        self.settings = settings
        self.cache_dir = settings.model_dir / "media"
        self.disk = MediaDiskCache(self.cache_dir, int(settings.media_cache_mb * 2**20))
        self._prefixes = parse_prefixes(settings.media_allowed_prefixes)
        self._local_root = (
            Path(settings.local_files_document_root) if settings.local_files_document_root else None
        )
        self._open_video = open_video
        # closing an evicted reader releases its file handle and decoded frames; a live session still holding
        # it reopens the file on its next access
        self._readers: BoundedCache[str, Media] = BoundedCache(
            max_items=keep, on_evict=lambda _key, media: _close(media.reader)
        )

    def policy(self, credentials: tuple[str, str] | None) -> MediaPolicy:
        host = credentials[0] if credentials else self.settings.label_studio_url
        return MediaPolicy(
            host or None, self._prefixes, self._local_root, int(self.settings.max_media_mb * 2**20)
        )

    def open_video(self, path: str | Path) -> Any:
        if self._open_video is None:
            from ..video import open_video  # the core's reader; imported late so the server starts without it

            self._open_video = open_video
        return self._open_video(path)

    def open(
        self, task: Mapping[str, Any], schema: Schema, credentials: tuple[str, str] | None = None
    ) -> Media:
        key = media_key(schema, task)
        media = self._readers.get(key)
        if media is None:
            media = self._readers.put(key, self._open_uncached(task, schema, key, credentials))
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
            entry = self._frames_dir(value, key, task_id, credentials)
            kind = "frames"
        else:
            if not isinstance(value, str) or not value:
                raise MediaError(f"task {task_id}: '{schema.data_key}' must be a video URL, not {value!r}")
            entry = self._video_file(value, task_id, credentials)
            kind = "video"
        path = self._entry_path(entry)
        try:
            reader = self.open_video(path)
        except MediaError:
            raise
        except Exception as exc:  # the reader's VideoError names the problem; the task id goes with it
            raise MediaError(f"task {task_id}: {exc}") from exc
        info = reader.info
        try:
            self._check_limits(info, task_id)
        except MediaError:
            _close(reader)
            raise
        self.disk.hold(entry, reader)
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

    def _video_file(self, url: str, task_id: Any, credentials: tuple[str, str] | None) -> str:
        policy = self.policy(credentials)
        digest = hashlib.sha1(json.dumps([policy.label_studio_url, url]).encode()).hexdigest()[:16]
        entry = f"videos/{digest}"  # a folder holding the file under its own name (for messages and players)
        if self.disk.lookup(entry) is None or self._entry_path(entry) == self.disk.path(entry):
            self._fetch(url, self.disk.path(entry) / _file_name(url), policy, credentials, task_id)
            self.disk.add(entry)
        return entry

    def _entry_path(self, entry: str) -> Path:
        """What a reader opens: a frame folder itself, or the one file in a video's folder."""
        folder = self.disk.path(entry)
        if entry.startswith("videos/"):
            files = [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.is_dir() else []
            return files[0] if files else folder
        return folder

    def _frames_dir(
        self, urls: list[str], key: str, task_id: Any, credentials: tuple[str, str] | None
    ) -> str:
        entry = f"frames/{key}"
        target = self.disk.path(entry)
        if (target / ".complete").exists() and self.disk.lookup(entry) is not None:
            return entry
        policy = self.policy(credentials)
        tmp = target.with_name(f"{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            width = max(6, len(str(len(urls))))
            for i, url in enumerate(urls):
                stem = tmp / f"{i:0{width}d}"
                self._fetch(url, stem.with_suffix(".download"), policy, credentials, task_id)
                _as_folder_frame(stem.with_suffix(".download"), stem, url)
            (tmp / ".complete").touch()
            if not (target / ".complete").exists():  # a finished folder may already be read by another reader
                shutil.rmtree(target, ignore_errors=True)  # a leftover without .complete
                try:
                    tmp.rename(target)
                except OSError:  # another thread won the race: its folder is as good as ours
                    pass
        finally:  # a failed download leaves no partial folder behind
            shutil.rmtree(tmp, ignore_errors=True)
        self.disk.add(entry)
        return entry

    def _fetch(
        self,
        url: str,
        dest: Path,
        policy: MediaPolicy,
        credentials: tuple[str, str] | None,
        task_id: Any,
    ) -> Path:
        token = credentials[1] if credentials else self.settings.label_studio_api_key
        try:
            return fetch(url, dest, policy, token or None, self.settings.download_timeout_s, task_id)
        except MediaError as exc:
            raise type(exc)(f"task {task_id}: {exc}") from None
        except (requests.RequestException, OSError) as exc:
            raise MediaError(f"task {task_id}: {describe_failure(url, exc)}") from None

    def download(self, url: str, task_id: Any = None, credentials: tuple[str, str] | None = None) -> str:
        """Local path of one task URL (cached under MODEL_DIR/media); MediaError with the reason when it fails."""
        return str(self._entry_path(self._video_file(url, task_id, credentials)))


def _close(reader: Any) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        close()
