"""Subcommands `serve` and `import-videos` for `python -m decaf_backend` (wired in by decaf_backend/cli.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .settings import Settings, check_serving_access


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env(host=args.host, port=args.port, preload=False if args.no_preload else None)
    check_serving_access(settings)  # refuse before the server and its dependencies load (serve checks again)
    from .server import serve

    serve(settings)
    return 0


def _import_videos(args: argparse.Namespace) -> int:
    from .importer import ImportOptions, import_videos

    if not args.url or not args.api_key:
        from ..errors import DecafError

        raise DecafError("give --url and --api-key (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    options = ImportOptions(
        stride=args.stride,
        fps=args.fps,
        prompt=args.prompt,
        local_root=Path(args.local_root) if args.local_root else None,
        ls_document_root=Path(args.ls_document_root) if args.ls_document_root else None,
        subdir=args.subdir,
        image_format=args.format,
        include_video=not args.no_video,
    )
    task_ids = import_videos(args.url, args.api_key, args.project, [Path(p) for p in args.videos], options)
    print(f"created {len(task_ids)} task(s): {', '.join(map(str, task_ids))}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="run the Label Studio ML backend (settings from environment variables, see README)"
    )
    serve.add_argument("--host", default=None, help="bind address (default $HOST or 0.0.0.0)")
    serve.add_argument("--port", type=int, default=None, help="port (default $PORT or 9090)")
    serve.add_argument(
        "--no-preload", action="store_true", help="load the models on the first request instead"
    )
    serve.set_defaults(func=_serve)

    imp = subparsers.add_parser(
        "import-videos", help="extract frames of videos and create frame-sequence tasks"
    )
    imp.add_argument("videos", nargs="+", help="video files or folders of videos")
    imp.add_argument("--url", default=os.environ.get("LABEL_STUDIO_URL"), help="Label Studio URL")
    imp.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="legacy token or PAT")
    imp.add_argument("--project", type=int, required=True, help="project id")
    imp.add_argument("--stride", type=int, default=1, help="keep every N-th frame (default 1: all)")
    imp.add_argument(
        "--fps", type=float, default=None, help="resample to this frame rate (overrides --stride)"
    )
    imp.add_argument("--prompt", default=None, help="text prompt stored in each task's 'prompt' field")
    imp.add_argument(
        "--local-root",
        default=None,
        help="write frames under this folder (Label Studio's LOCAL_FILES_DOCUMENT_ROOT) instead of uploading them",
    )
    imp.add_argument(
        "--ls-document-root",
        default=None,
        help="that folder's path as Label Studio sees it (default: --local-root)",
    )
    imp.add_argument("--subdir", default="decaf-frames", help="subfolder of the local root for the frames")
    imp.add_argument("--format", choices=["jpg", "png"], default="jpg", help="frame image format")
    imp.add_argument("--no-video", action="store_true", help="do not store the video itself in the task")
    imp.set_defaults(func=_import_videos)
