"""The Label Studio 1.23.2 the end-to-end tests share: one server per test process, started by the package's own
launcher (decaf_backend/labelstudio_server.py, which `quickstart` uses too) with a fresh data dir under /tmp.

The venv comes from env LS_VENV (default <repo>/.lsvenv, as scripts/setup makes it).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from decaf_backend.labelstudio_server import (
    LS_VERSION,
    LabelStudioServer,
    free_port,
    install_label_studio,
    ls_executable,
    ls_venv,
    start_label_studio,
)

__all__ = ["LS_VERSION", "LabelStudioServer", "free_port", "ls_executable", "ls_venv", "shared_server"]

_SHARED: LabelStudioServer | None = None


def shared_server() -> LabelStudioServer:
    """One server per test process, however many fixtures ask for it; stopped when the process exits."""
    global _SHARED
    if _SHARED is None or (_SHARED.process is not None and _SHARED.process.poll() is not None):
        _SHARED = start_label_studio(Path(tempfile.mkdtemp(prefix="decaf-ls-")))
        atexit.register(_stop_shared)
    return _SHARED


def _stop_shared() -> None:
    global _SHARED
    if _SHARED is not None:
        _SHARED.stop()
        shutil.rmtree(_SHARED.data_dir.parent, ignore_errors=True)
        _SHARED = None


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["install"]:
        print(install_label_studio())
    else:
        srv = start_label_studio(Path(tempfile.mkdtemp(prefix="decaf-ls-")))
        print(srv.url, srv.token, srv.media_root, flush=True)
        try:
            srv.process.wait()
        except KeyboardInterrupt:
            srv.stop()
