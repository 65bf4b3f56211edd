"""`quickstart`: from a checkout to a Label Studio project pre-labeled by DecAF with one command.

It installs Label Studio into its own venv when missing, starts it on 127.0.0.1 with the settings the backend
needs and an admin login, starts `serve` on loopback, makes a frame-sequence project (and a video-track one on
request), imports the videos (a built-in synthetic clip when none is given), connects the backend with interactive
pre-annotations on, pre-labels every task and waits until Ctrl-C, which stops both servers (process groups).
Everything lives in one data folder; a second run reuses it (same login, projects and tasks: nothing duplicated).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests

from .errors import DecafError, VideoError
from .labelstudio_server import (
    CHECKOUT,
    LabelStudioServer,
    install_label_studio,
    ls_executable,
    ls_venv,
    new_credentials,
    port_is_free,
    start_label_studio,
    start_process_group,
    stop_process_group,
)

FRAMES_TITLE = "DecAF quickstart: frame masks"
TRACKS_TITLE = "DecAF quickstart: video tracks"
DEMO_PROMPT = "the red disc"
FRAMES_SUBDIR = "decaf-frames"


@dataclass(frozen=True)
class QuickstartOptions:
    videos: Sequence[Path] = ()
    prompt: str | None = None
    port: int = 8080
    backend_port: int = 9090
    tiny: bool = False
    video_track: bool = False
    data_dir: Path = Path.home() / ".local" / "share" / "decaf-quickstart"
    fps: float | None = None  # frames per second kept when importing (default: every frame)
    mllm: str | None = None
    sam2: str | None = None
    ready_timeout_s: float = 3600.0  # model loading (a first run may download them) and pre-labeling


def default_data_dir() -> Path:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return Path(os.environ.get("DECAF_QUICKSTART_DIR") or data_home / "decaf-quickstart")


def run_quickstart(options: QuickstartOptions, out: TextIO = sys.stdout) -> int:
    """Set everything up, print where to look, then serve until Ctrl-C (SIGINT) or SIGTERM."""

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    data_dir = options.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir):
        videos = _videos(options, data_dir)
        prompt = options.prompt if options.prompt or options.videos else DEMO_PROMPT
        _check_ports(options.port, options.backend_port)
        venv = ls_venv()
        if not ls_executable(venv).exists():
            log = data_dir / "install-label-studio.log"
            say(f"Installing Label Studio into {venv} (a few minutes; pip's output goes to {log}) ...")
            install_label_studio(venv, log)
        models = _models(options, data_dir, say)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
        running = contextlib.ExitStack()
        ready = False
        try:
            say(f"Starting Label Studio on http://127.0.0.1:{options.port} ...")
            ls = start_label_studio(data_dir / "label-studio", options.port, venv, _credentials(data_dir))
            running.callback(ls.stop)
            say(f"Label Studio: {ls.url}   login {ls.username} / {ls.password}   (API token {ls.token})")
            backend = _start_backend(ls, options.backend_port, models, data_dir)
            running.callback(stop_process_group, backend)
            backend_url = f"http://127.0.0.1:{options.backend_port}"
            say(f"Starting the DecAF backend on {backend_url} (loading the models) ...")
            version = _wait_backend(backend, backend_url, data_dir / "backend.log", options.ready_timeout_s)
            say(f"DecAF backend ready, model version {version}")
            projects = _set_up_projects(ls, backend_url, videos, prompt, options, data_dir, say)
            for title, (project, task_ids) in projects.items():
                say(f"Pre-labeling {len(task_ids)} task(s) of '{title}' ...")
                _prelabel(ls, project, task_ids, version, options.ready_timeout_s, say)
            first_project, first_tasks = projects[FRAMES_TITLE]
            _write_state(data_dir, ls, backend, backend_url, projects)
            ready = True
            note = " (tiny random-weight models: the masks mean nothing)" if options.tiny else ""
            say("")
            say(f"Ready{note}. Open the first task:")
            say(f"  {ls.url}/projects/{first_project}/data?task={first_tasks[0]}")
            say(f"  login {ls.username} / {ls.password}")
            say(
                "  Correct a mask: bottom bar -> Auto-Annotation on, smart keypoint tool, click (Alt+click removes)."
            )
            say(f"Data folder: {data_dir} (a second run reuses it). Press Ctrl-C to stop both servers.")
            _watch(ls, backend, data_dir / "backend.log")
        except KeyboardInterrupt:
            say("Stopping Label Studio and the DecAF backend ...")
            return 0 if ready else 130
        finally:
            # a second Ctrl-C must not cut the shutdown short and leave a server behind
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                running.close()
                (data_dir / "state.json").unlink(missing_ok=True)
            finally:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """One quickstart per data folder: two Label Studios on one SQLite database would corrupt it."""
    with open(data_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DecafError(f"another quickstart is running with the data folder {data_dir}") from None
        yield


def _check_ports(ls_port: int, backend_port: int) -> None:
    if ls_port == backend_port:
        raise DecafError(f"Label Studio and the backend cannot share port {ls_port}")
    for port, flag in ((ls_port, "--port"), (backend_port, "--backend-port")):
        if not port_is_free(port):
            raise DecafError(
                f"port {port} on 127.0.0.1 is in use: stop what runs there or choose another {flag}"
            )


def _videos(options: QuickstartOptions, data_dir: Path) -> list[Path]:
    """The videos to import, each opened and decoded once now so a bad one fails before anything starts."""
    from .backend.importer import video_files
    from .video import open_video

    if not options.videos:
        return [demo_clip(data_dir / "demo" / "decaf-demo.mp4")]
    try:
        videos = [p.resolve() for p in video_files([Path(v).expanduser() for v in options.videos])]
    except VideoError as exc:
        raise DecafError(f"cannot import the videos: {exc}") from None
    for path in videos:
        try:
            reader = open_video(path)
            try:
                reader[0]
            finally:
                reader.close()
        except VideoError as exc:
            raise DecafError(f"cannot read the video {path}: {exc}") from None
    return videos


def demo_clip(path: Path, num_frames: int = 10, height: int = 96, width: int = 128, fps: int = 5) -> Path:
    """A small synthetic clip (a red disc crossing a textured background), encoded with PyAV; made once."""
    import av
    import numpy as np

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    background = (
        rng.integers(0, 40, (height, width, 3)) + np.linspace(40, 120, width)[None, :, None]
    ).astype(np.uint8)
    radius = height // 6
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for i in range(num_frames):
            cx = radius + (width - 2 * radius) * i / (num_frames - 1)
            frame = background.copy()
            frame[(xx - cx) ** 2 + (yy - height / 2) ** 2 <= radius**2] = (220, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    partial.replace(path)
    return path


def _models(options: QuickstartOptions, data_dir: Path, say: Any) -> dict[str, str]:
    """DECAF_MLLM / DECAF_SAM2 for the backend: tiny random-weight checkpoints (built once) or the configured ones."""
    if options.tiny:
        from .tiny_models import make_tiny_models

        folder = data_dir / "tiny-models"
        done = folder / ".complete"
        if not done.is_file():
            say(f"Building tiny random-weight models in {folder} ...")
            make_tiny_models(folder)
            done.touch()
        return {"DECAF_MLLM": str(folder / "qwen2_5_vl"), "DECAF_SAM2": str(folder / "sam2")}
    chosen = {"DECAF_MLLM": options.mllm, "DECAF_SAM2": options.sam2}
    return {k: v for k, v in chosen.items() if v}


def _credentials(data_dir: Path) -> dict[str, str]:
    """The admin login, made on the first run and kept (only readable by the user) for the next ones."""
    path = data_dir / "credentials.json"
    if path.is_file():
        return json.loads(path.read_text())
    creds = new_credentials()
    path.touch(mode=0o600)
    path.write_text(json.dumps(creds, indent=2))
    return creds


def _start_backend(
    ls: LabelStudioServer, port: int, models: dict[str, str], data_dir: Path
) -> subprocess.Popen:
    package_root = str(Path(__file__).resolve().parents[1])  # the child imports this very copy of the package
    env = dict(os.environ)
    env.update(
        models,
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls.token,
        MODEL_DIR=str(data_dir / "backend"),
        LOCAL_FILES_DOCUMENT_ROOT=str(
            ls.media_root
        ),  # the imported frames are read from disk, not downloaded
        DECAF_PRELOAD="true",
        PYTHONPATH=os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p),
    )
    env.pop("HOST", None), env.pop("PORT", None)
    command = [sys.executable, "-m", "decaf_backend", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return start_process_group(command, env, data_dir / "backend.log")


def _wait_backend(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> str:
    """Wait until the backend has loaded its models; its model version. A load failure is an error, with its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DecafError(
                f"the DecAF backend exited with {process.returncode}; end of {log_path}:\n{_tail(log_path)}"
            )
        try:
            health = requests.get(url + "/health", timeout=2).json()
        except (requests.RequestException, ValueError):
            health = {}
        if health.get("load_error"):
            raise DecafError(f"the DecAF backend cannot load its models: {health['load_error']}")
        if health.get("model_loaded"):
            return str(health["model_version"])
        time.sleep(2.0)
    raise DecafError(f"the DecAF backend did not load its models in {timeout_s:.0f} s; see {log_path}")


def _label_config(name: str, fps: float | None = None) -> str:
    path = CHECKOUT / "label_config" / name
    if not path.is_file():
        raise DecafError(f"{path} not found: run quickstart from a source checkout")
    text = path.read_text()
    return text.replace('framerate="25.0"', f'framerate="{fps:g}"') if fps else text


def _project(ls: LabelStudioServer, title: str, config: str) -> int:
    reply = ls.api("GET", "/api/projects", params={"page_size": 100, "title": title})
    for project in reply["results"] if isinstance(reply, dict) else reply:
        if project["title"] == title:
            return int(project["id"])
    return int(ls.api("POST", "/api/projects", json={"title": title, "label_config": config})["id"])


def _connect(ls: LabelStudioServer, project: int, backend_url: str) -> int:
    """The project's ML backend: reused when it points at our URL, else (an earlier run's port) replaced."""
    for ml in ls.api("GET", "/api/ml", params={"project": project}):
        if ml["url"].rstrip("/") == backend_url:
            return int(ml["id"])
        ls.api("DELETE", f"/api/ml/{ml['id']}")
    ml = ls.api(
        "POST",
        "/api/ml",
        json={"url": backend_url, "project": project, "title": "DecAF", "is_interactive": True},
    )
    if ml.get("state") != "CO":
        raise DecafError(f"Label Studio could not connect the backend at {backend_url}: {ml}")
    return int(ml["id"])


def _set_up_projects(
    ls: LabelStudioServer,
    backend_url: str,
    videos: list[Path],
    prompt: str | None,
    options: QuickstartOptions,
    data_dir: Path,
    say: Any,
) -> dict[str, tuple[int, list[int]]]:
    """Projects, backend connections and tasks; a video imported by an earlier run (same file, same prompt) is
    not imported again. Returns {title: (project id, task ids in video order)}."""
    from .backend.importer import ImportOptions, LabelStudioAPI, import_videos
    from .video import open_video

    record_path = data_dir / "imported.json"
    record: dict[str, dict[str, int]] = json.loads(record_path.read_text()) if record_path.is_file() else {}
    api = LabelStudioAPI(ls.url, ls.token)
    frames_project = _project(ls, FRAMES_TITLE, _label_config("frames_masks.xml"))
    _connect(ls, frames_project, backend_url)
    projects = {FRAMES_TITLE: (frames_project, [])}
    if options.video_track:
        reader = open_video(videos[0])
        fps = reader.info.fps or 25.0
        reader.close()
        tracks_project = _project(ls, TRACKS_TITLE, _label_config("video_tracks.xml", fps))
        _connect(ls, tracks_project, backend_url)
        (ls.media_root / FRAMES_SUBDIR).mkdir(parents=True, exist_ok=True)  # Label Studio checks it exists
        api.ensure_local_storage(tracks_project, ls.media_root / FRAMES_SUBDIR)
        projects[TRACKS_TITLE] = (tracks_project, [])
    existing = {title: _task_ids(ls, project) for title, (project, _) in projects.items()}
    import_options = ImportOptions(
        fps=options.fps, prompt=prompt, local_root=ls.media_root, subdir=FRAMES_SUBDIR
    )
    for video in videos:
        key = _video_key(video, prompt, options.fps)
        done = record.setdefault(key, {})
        if done.get(FRAMES_TITLE) not in existing[FRAMES_TITLE]:
            say(f"Importing {video.name} into '{FRAMES_TITLE}' ...")
            (done[FRAMES_TITLE],) = import_videos(ls.url, ls.token, frames_project, [video], import_options)
        projects[FRAMES_TITLE][1].append(done[FRAMES_TITLE])
        if options.video_track:
            if done.get(TRACKS_TITLE) not in existing[TRACKS_TITLE]:
                frames_task = ls.api("GET", f"/api/tasks/{done[FRAMES_TITLE]}")["data"]
                task = {
                    "video": frames_task["video"],
                    "source": video.name,
                    **({"prompt": prompt} if prompt else {}),
                }
                (done[TRACKS_TITLE],) = api.create_tasks(projects[TRACKS_TITLE][0], [task])
            projects[TRACKS_TITLE][1].append(done[TRACKS_TITLE])
        record_path.write_text(json.dumps(record, indent=2))
    return projects


def _video_key(video: Path, prompt: str | None, fps: float | None) -> str:
    stat = video.stat()
    text = f"{video}|{stat.st_size}|{stat.st_mtime_ns}|{prompt}|{fps}"
    return hashlib.sha1(text.encode()).hexdigest()


def _task_ids(ls: LabelStudioServer, project: int) -> set[int]:
    reply = ls.api(
        "GET", "/api/tasks", params={"project": project, "page_size": 10000, "fields": "task_only"}
    )
    return {int(t["id"]) for t in reply["tasks"]}


def _prelabel(
    ls: LabelStudioServer, project: int, task_ids: list[int], version: str, timeout_s: float, say: Any
) -> None:
    """Retrieve predictions (the Data Manager action) for tasks without one of this model version, then wait
    until each has one: Label Studio stores what comes back in time, the backend posts the rest later."""

    def missing() -> list[int]:
        return [
            t
            for t in task_ids
            if not any(
                p["model_version"] == version for p in ls.api("GET", "/api/predictions", params={"task": t})
            )
        ]

    todo = missing()
    if not todo:
        return
    with contextlib.suppress(DecafError, requests.RequestException):  # a timeout here: the rest arrives later
        ls.api(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project},
            json={"selectedItems": {"all": False, "included": todo}},
        )
    deadline, shown = time.monotonic() + timeout_s, 0.0
    while (todo := missing()) and time.monotonic() < deadline:
        if time.monotonic() - shown > 30:
            say(f"  waiting for {len(todo)} prediction(s) ...")
            shown = time.monotonic()
        time.sleep(2.0)
    if todo:
        say(f"  {len(todo)} task(s) have no prediction yet: they will get one when opened")


def _write_state(
    data_dir: Path,
    ls: LabelStudioServer,
    backend: subprocess.Popen,
    backend_url: str,
    projects: dict[str, tuple[int, list[int]]],
) -> None:
    """What runs now (process groups, URLs, projects): for scripts and tests; removed when quickstart stops."""
    state = {
        "label_studio": {"url": ls.url, "pgid": ls.process.pid if ls.process else None},
        "backend": {"url": backend_url, "pgid": backend.pid},
        "projects": {title: {"id": pid, "tasks": tasks} for title, (pid, tasks) in projects.items()},
    }
    (data_dir / "state.json").write_text(json.dumps(state, indent=2))


def _watch(ls: LabelStudioServer, backend: subprocess.Popen, backend_log: Path) -> None:
    """Sleep until interrupted; a server that dies on its own is an error (with its log), not a silent hang."""
    while True:
        if ls.process is not None and ls.process.poll() is not None:
            raise DecafError(
                f"Label Studio exited with {ls.process.returncode}; end of its log:\n{ls.log_tail()}"
            )
        if backend.poll() is not None:
            raise DecafError(
                f"the DecAF backend exited with {backend.returncode}; end of its log:\n{_tail(backend_log)}"
            )
        time.sleep(1.0)


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _command(args: Any) -> int:
    options = QuickstartOptions(
        videos=[Path(v) for v in args.videos],
        prompt=args.prompt,
        port=args.port,
        backend_port=args.backend_port,
        tiny=args.tiny,
        video_track=args.video_track,
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        fps=args.fps,
        mllm=args.mllm,
        sam2=args.sam2,
    )
    return run_quickstart(options)


def register(subparsers: Any) -> None:
    qs = subparsers.add_parser(
        "quickstart",
        help="install and start Label Studio and the backend, import videos and pre-label them (Ctrl-C stops)",
    )
    qs.add_argument(
        "videos", nargs="*", help="video files or folders of videos (default: a small synthetic clip)"
    )
    qs.add_argument(
        "--prompt", default=None, help="text prompt for every video (default: the label's prompt)"
    )
    qs.add_argument("--port", type=int, default=8080, help="Label Studio port on 127.0.0.1 (default 8080)")
    qs.add_argument("--backend-port", type=int, default=9090, help="backend port on 127.0.0.1 (default 9090)")
    qs.add_argument(
        "--tiny", action="store_true", help="tiny random-weight models: runs anywhere, masks mean nothing"
    )
    qs.add_argument("--video-track", action="store_true", help="also make a video project with box tracks")
    qs.add_argument(
        "--fps", type=float, default=None, help="import this many frames per second (default: all)"
    )
    qs.add_argument(
        "--data-dir",
        default=None,
        help="data folder (default $DECAF_QUICKSTART_DIR or ~/.local/share/decaf-quickstart)",
    )
    qs.add_argument(
        "--mllm", default=None, help="MLLM hub id or folder (default $DECAF_MLLM or Qwen2.5-VL-7B)"
    )
    qs.add_argument("--sam2", default=None, help="SAM2 hub id or folder (default $DECAF_SAM2 or SAM2.1-L)")
    qs.set_defaults(func=_command)
