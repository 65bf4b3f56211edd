"""`import-videos`: turn video files into frame-sequence tasks ({"frames": [...], "video": ..., "prompt": ...}).

Frames are extracted with PyAV (every `stride`-th frame, or resampled to `fps`) and put where Label Studio serves
them: uploaded through its API (default; the files become project uploads without creating one task per image), or
written under its local-files document root with a Local Storage connection covering them (`local_root`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_jwt_well_formed
from PIL import Image

from ..video import VIDEO_SUFFIXES, open_video
from .errors import MediaError

log = logging.getLogger(__name__)
UPLOAD_BATCH = 50


@dataclass(frozen=True)
class ImportOptions:
    stride: int = 1
    fps: float | None = None  # resample to this rate (overrides stride)
    prompt: str | None = None
    local_root: Path | None = None  # Label Studio's LOCAL_FILES_DOCUMENT_ROOT as this machine sees it
    ls_document_root: Path | None = None  # the same folder as Label Studio sees it (default: local_root)
    subdir: str = "decaf-frames"
    image_format: str = "jpg"  # jpg or png
    include_video: bool = True


class LabelStudioAPI:
    """The few REST calls the importer needs; legacy tokens or Personal Access Tokens (exchanged for a JWT)."""

    def __init__(self, url: str, api_key: str, timeout: float = 300) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()
        if is_jwt_well_formed(api_key):
            access = self._call("POST", "/api/token/refresh/", json={"refresh": api_key})["access"]
            self.session.headers["Authorization"] = f"Bearer {access}"
        else:
            self.session.headers["Authorization"] = f"Token {api_key}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise MediaError(f"cannot reach Label Studio at {self.url}: {exc}") from exc
        if not r.ok:
            raise MediaError(
                f"Label Studio answered {method} {path} with HTTP {r.status_code}: {r.text[:500]}"
            )
        return r.json() if r.content else None

    def upload_files(self, project: int, paths: Sequence[Path]) -> list[str]:
        """Upload files as project uploads (no tasks); returns their /data/upload/... URLs in the given order."""
        urls: list[str] = []
        for start in range(0, len(paths), UPLOAD_BATCH):
            batch = paths[start : start + UPLOAD_BATCH]
            handles = [open(p, "rb") for p in batch]
            try:
                files = [(f"file{i}", (p.name, h)) for i, (p, h) in enumerate(zip(batch, handles))]
                reply = self._call(
                    "POST", f"/api/projects/{project}/import?commit_to_project=false", files=files
                )
            finally:
                for h in handles:
                    h.close()
            ids = reply.get("file_upload_ids") or []
            uploads = self._call(
                "GET", f"/api/projects/{project}/file-uploads", params={"ids": json.dumps(ids)}
            )
            by_name = {
                Path(u["file"]).name.split("-", 1)[-1]: u["file"] for u in uploads if u.get("id") in ids
            }
            for p in batch:
                if p.name not in by_name:
                    raise MediaError(f"Label Studio did not report the upload of {p.name}")
                urls.append("/data/" + by_name[p.name].lstrip("/"))
        return urls

    def ensure_local_storage(self, project: int, path: Path) -> None:
        """A Local Storage whose path covers `path` (Label Studio serves local files only under one); no sync."""
        storages = self._call("GET", "/api/storages/localfiles", params={"project": project}) or []
        for storage in storages:
            root = Path(storage.get("path") or "/nonexistent")
            if path == root or root in path.parents:
                return
        self._call(
            "POST",
            "/api/storages/localfiles",
            json={"project": project, "path": str(path), "use_blob_urls": True, "title": "DecAF frames"},
        )

    def create_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        reply = self._call("POST", f"/api/projects/{project}/import?return_task_ids=true", json=tasks)
        return list(reply.get("task_ids") or [])


def video_files(inputs: Sequence[Path]) -> list[Path]:
    """Video files given directly or found (sorted, not recursive) in the given folders."""
    out: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            out.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES))
        elif item.is_file():
            out.append(item)
        else:
            raise MediaError(f"{item} does not exist")
    if not out:
        raise MediaError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return out


def sampled_frames(path: Path, stride: int = 1, fps: float | None = None) -> Iterator[tuple[int, Any]]:
    """(frame index, HxWx3 uint8) of every `stride`-th frame, or of frames resampled to `fps`; decoded in order."""
    if stride < 1:
        raise MediaError(f"stride must be at least 1, not {stride}")
    reader = open_video(path)
    try:
        native = reader.info.fps
        if fps is not None:
            if fps <= 0:
                raise MediaError(f"fps must be positive, not {fps}")
            step = native / fps if native > 0 else 1.0
        else:
            step = float(stride)
        next_pick = 0.0
        for i, frame in enumerate(reader.iter_frames()):
            if i + 1e-6 >= next_pick:
                yield i, frame
                next_pick += max(step, 1.0)
    finally:
        reader.close()


def extract_frames(path: Path, out_dir: Path, options: ImportOptions) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "png" if options.image_format == "png" else "jpg"
    files = []
    for i, frame in sampled_frames(path, options.stride, options.fps):
        dest = out_dir / f"{path.stem}_{i:06d}.{suffix}"
        Image.fromarray(frame).save(dest, **({"quality": 95} if suffix == "jpg" else {}))
        files.append(dest)
    if not files:
        raise MediaError(f"{path} gave no frames")
    return files


def import_videos(
    url: str, api_key: str, project: int, inputs: Sequence[Path], options: ImportOptions
) -> list[int]:
    """Create one frame-sequence task per video; returns the new task ids."""
    api = LabelStudioAPI(url, api_key)
    videos = video_files(inputs)
    tasks = []
    for video in videos:
        tag = hashlib.sha1(str(video.resolve()).encode()).hexdigest()[:8]
        name = f"{video.stem}-{tag}"
        if options.local_root is not None:
            folder = options.local_root / options.subdir / name
            frames = extract_frames(video, folder, options)
            ls_root = options.ls_document_root or options.local_root
            api.ensure_local_storage(project, ls_root / options.subdir)
            frame_urls = [f"/data/local-files/?d={options.subdir}/{name}/{f.name}" for f in frames]
            video_url = None
            if options.include_video:
                shutil.copyfile(video, folder / video.name)
                video_url = f"/data/local-files/?d={options.subdir}/{name}/{video.name}"
        else:
            with tempfile.TemporaryDirectory(prefix="decaf-import-") as tmp:
                frames = extract_frames(video, Path(tmp) / name, options)
                uploads = [*frames, video] if options.include_video else frames
                urls = api.upload_files(project, uploads)
            frame_urls, video_url = urls[: len(frames)], (urls[-1] if options.include_video else None)
        task: dict[str, Any] = {"frames": frame_urls, "source": video.name}
        if video_url:
            task["video"] = video_url
        if options.prompt:
            task["prompt"] = options.prompt
        tasks.append(task)
        log.info("%s: %d frames", video.name, len(frame_urls))
    return api.create_tasks(project, tasks)
