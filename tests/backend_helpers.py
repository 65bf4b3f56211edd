"""Test doubles for the Label Studio backend's protocol tests (no models): a colour segmenter with the pipeline's
segment/refine surface, synthetic frames, and a local HTTP server standing in for Label Studio's media and
prediction API (token-checked like the real one).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field, replace
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import av
import numpy as np
from PIL import Image

from decaf_backend.backend.runtime import Runtime
from decaf_backend.backend.server import create_app
from decaf_backend.backend.settings import Settings
from decaf_backend.errors import PromptError, VideoError
from decaf_backend.types import Box, Click, FrameMasks, VideoSegmentation

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
TOLERANCE = 60  # max per-channel distance for "the same colour"


def disc_and_square_frames(num_frames: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    """A red disc moving right and a still green square on a grey background: (N, H, W, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.full((num_frames, height, width, 3), 128, dtype=np.uint8)
    radius = max(3, height // 6)
    for i in range(num_frames):
        cx = radius + (width // 2 - 2 * radius) * i / max(1, num_frames - 1)
        frames[i][(xx - cx) ** 2 + (yy - height / 2) ** 2 <= radius**2] = COLOURS["red"]
        frames[i][height // 8 : height // 8 + height // 4, width - width // 4 - 2 : width - 2] = COLOURS[
            "green"
        ]
    return frames


def colour_mask(frame: np.ndarray, colour: tuple[int, ...]) -> np.ndarray:
    return (np.abs(frame.astype(int) - np.asarray(colour)[None, None, :3]) <= TOLERANCE).all(axis=2)


def colour_centre(frame: np.ndarray, name: str) -> tuple[float, float]:
    """(x, y) in pixels: the mean of the pixels of the colour `name` on `frame`."""
    y, x = np.argwhere(colour_mask(frame, COLOURS[name])).mean(axis=0)
    return float(x), float(y)


def encode_frames(
    path: Path,
    frames: np.ndarray,
    codec: str = "libx264",
    fps: int = 10,
    gop: int = 4,
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    pts: list[int] | None = None,
    container_format: str | None = None,
    faststart: bool = False,
) -> Path:
    """Encode rgb24 frames with PyAV; a short GOP gives several keyframes so random access has to seek."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = {"g": str(gop), **({"deadline": "realtime"} if codec.startswith("libvpx") else {})}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if pts is not None:
                video_frame.pts, video_frame.time_base = pts[i], Fraction(1, 1000)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
    return path


def audio_only_file(path: Path) -> Path:
    """A short Opus file with no video stream."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libopus", rate=48000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 960
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@dataclass
class ColourSession:
    reader: Any
    include: list[tuple[int, ...]] = field(default_factory=list)
    exclude: list[tuple[int, ...]] = field(default_factory=list)
    prompts: list[Any] = field(default_factory=list)  # applied, in order (as the pipeline's session)

    def masks(self) -> FrameMasks:
        info = self.reader.info
        out = FrameMasks(info.num_frames, info.height, info.width)
        for i in range(info.num_frames):
            frame = self.reader[i]
            mask = np.zeros((info.height, info.width), dtype=bool)
            for c in self.include:
                mask |= colour_mask(frame, c)
            for c in self.exclude:
                mask &= ~colour_mask(frame, c)
            out[i] = mask
        return out

    def apply(self, prompt: Any) -> None:
        if isinstance(prompt, Click):
            colour = tuple(int(v) for v in self.reader[prompt.frame][int(prompt.y), int(prompt.x)])
            (self.include if prompt.positive else self.exclude).append(colour)
        else:
            cy, cx = int((prompt.y0 + prompt.y1) / 2), int((prompt.x0 + prompt.x1) / 2)
            self.include.append(tuple(int(v) for v in self.reader[prompt.frame][cy, cx]))
        self.prompts.append(prompt)


class ColourSegmenter:
    """segment(): pixels of the colour named in the prompt, on every frame. correct(): a positive click adds the
    clicked colour on every frame, a negative one removes it, a box adds the colour at its centre; a session whose
    prompts are a prefix of the request's is continued, else one starts from the segmentation's masks (like the
    pipeline). It counts its calls so tests can check a correction never runs segment() (the MLLM stage) again, and
    records the prompts each correction applied anew (one more click = one applied prompt).
    """

    random_weights = False

    def __init__(self) -> None:
        self.segment_calls = 0
        self.refine_calls = 0
        self.refine_inputs: list[tuple[list, list]] = []
        self.sessions_started = 0

    def segment(self, video: Any, prompt: str, progress: Any = None) -> VideoSegmentation:
        self.segment_calls += 1
        name = next((n for n in COLOURS if n in prompt.lower()), None)
        if name is None:
            raise PromptError(f"no colour named in {prompt!r}")
        if progress is not None:
            progress("video", 0.5)
        session = ColourSession(video, [COLOURS[name]])
        masks = session.masks()
        return VideoSegmentation(
            prompt=prompt,
            object_name=name,
            video=video.info,
            key_frame_indices=[0],
            masks=masks,
            prompt_frames=[0],
            scores={"score": 0.9},
            session=session,
        )

    def correct(
        self, seg: VideoSegmentation, prompts: Any, session: Any = None, video: Any = None
    ) -> VideoSegmentation:
        prompts = list(prompts)
        if not prompts:
            return seg
        if session is None and isinstance(seg.session, ColourSession) and not seg.session.prompts:
            session = seg.session
        if session is None or session.prompts != prompts[: len(session.prompts)]:
            session = self._start(seg, video)
        new = prompts[len(session.prompts) :]
        self.refine_calls += 1
        self.refine_inputs.append(
            ([p for p in new if isinstance(p, Click)], [p for p in new if isinstance(p, Box)])
        )
        for prompt in new:
            session.apply(prompt)
        return replace(seg, masks=session.masks(), session=session)

    def refine(
        self, seg: VideoSegmentation, clicks: Any = (), boxes: Any = (), video: Any = None
    ) -> VideoSegmentation:
        applied = list(seg.session.prompts) if isinstance(seg.session, ColourSession) else []
        return self.correct(seg, [*applied, *[p for p in [*clicks, *boxes] if p not in applied]], video=video)

    def _start(self, seg: VideoSegmentation, video: Any) -> ColourSession:
        """Rebuilt like the pipeline: from the masks of the prompt (or largest) frame."""
        if video is None:
            raise VideoError("no session and no video to rebuild it")
        self.sessions_started += 1
        session = ColourSession(video)
        frames = seg.prompt_frames or [int(np.argmax([m.sum() for m in seg.masks]))]
        for f in frames:
            mask = seg.masks[f]
            if mask.any():
                session.include.append(tuple(int(v) for v in np.median(video[f][mask], axis=0)))
        return session


# ------------------------------------------------------------------------------------------ fake Label Studio


class FakeLabelStudio:
    """Serves files under `root` the way Label Studio does (token required for /data/... and /storage-data/...),
    plain files under /plain/ without auth, and /api/predictions/ (list by task, create)."""

    def __init__(self, root: Path, token: str = "secret-token") -> None:
        self.root, self.token = root, token
        self.predictions: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, str | None]] = []
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorized(self) -> bool:
                return self.headers.get("Authorization") == f"Token {fake.token}"

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = parse_qs(url.query)
                fake.requests.append(("GET", self.path, self.headers.get("Authorization")))
                if url.path.startswith("/api/predictions"):
                    if not self._authorized():
                        return self._send(401, b'{"detail": "no token"}')
                    task = int(query.get("task", ["0"])[0])
                    found = [p for p in fake.predictions if p["task"] == task]
                    return self._send(200, json.dumps(found).encode())
                if url.path.startswith("/plain/"):
                    rel = url.path[len("/plain/") :]
                elif url.path.startswith("/data/local-files"):
                    rel = query.get("d", [""])[0]
                elif url.path.startswith("/storage-data/uploaded"):
                    rel = query.get("filepath", [""])[0]
                elif url.path.startswith("/data/upload/"):
                    rel = url.path[len("/data/") :]
                else:
                    return self._send(404, b'{"detail": "not found"}')
                if not url.path.startswith("/plain/") and not self._authorized():
                    return self._send(401, b'{"detail": "authentication required"}')
                path = (fake.root / rel).resolve()
                if fake.root.resolve() not in path.parents or not path.is_file():
                    return self._send(404, b'{"detail": "not found"}')
                return self._send(200, path.read_bytes(), "application/octet-stream")

            def do_POST(self) -> None:
                fake.requests.append(("POST", self.path, self.headers.get("Authorization")))
                if not urlparse(self.path).path.startswith("/api/predictions") or not self._authorized():
                    return self._send(401, b"{}")
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                body["id"] = len(fake.predictions) + 1
                fake.predictions.append(body)
                return self._send(201, json.dumps(body).encode())

        return Handler


def write_frames(folder: Path, frames: np.ndarray, suffix: str = ".png") -> list[str]:
    """Save frames as images named f0000.png...; returns the names relative to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, frame in enumerate(frames):
        name = f"f{i:04d}{suffix}"
        Image.fromarray(frame).save(folder / name)
        names.append(name)
    return names


def without_review(config: str) -> str:
    """A ready config minus its review box: these tests read every region; the review TextArea's result is
    checked in test_backend_results.py and the browser test."""
    return re.sub(
        r'\s*<Header value="What the model thought"[^>]*/>\s*<TextArea name="review"[^>]*/>', "", config
    )


def frames_task_in_label_studio(ls: Any, name: str, frames: np.ndarray, label_config: str) -> tuple[int, int]:
    """A Label Studio project titled `name` with one task (prompt "red") showing `frames` from local-files
    storage in the folder `name`: (project id, task id)."""
    folder = ls.media_root / name
    names = write_frames(folder, frames)
    project = ls.api(
        "POST", "/api/projects", json={"title": name.replace("_", " "), "label_config": label_config}
    )["id"]
    ls.api("POST", "/api/storages/localfiles", json={"project": project, "path": str(folder), "use_blob_urls": True,
                                                      "title": "frames"})  # fmt: skip
    urls = [f"/data/local-files/?d={name}/{n}" for n in names]
    (task_id,) = ls.api(
        "POST",
        f"/api/projects/{project}/import?return_task_ids=true",
        json=[{"frames": urls, "prompt": "red"}],
    )["task_ids"]
    return project, task_id


def colour_client(settings: Settings) -> Any:
    """A Flask test client of the backend with `settings`, segmenting with the colour segmenter."""
    return create_app(Runtime(settings, pipeline_factory=lambda s: ColourSegmenter())).test_client()
