"""Install and run a real Label Studio 1.23.2 for end-to-end tests, in its own venv (it pins its own Django stack).

The venv comes from env LS_VENV (default /work/lsvenv, else <repo>/.lsvenv as `.ci/run` makes it). The server runs on
127.0.0.1 with a free port, a fresh data dir, local-files serving, the settings an ML backend on localhost needs
(ML_BLOCK_LOCAL_IP=false, SSRF_PROTECTION_ENABLED=false) and legacy API tokens switched on through the Django shell,
as ../shared/docs/label-studio.md §1 describes.
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

LS_VERSION = "1.23.2"
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = float(os.environ.get("LS_START_TIMEOUT", "420"))
_ENABLE_LEGACY_TOKENS = (
    "from organizations.models import Organization\n"
    "for o in Organization.objects.all():\n"
    "    s = o.jwt\n"
    "    s.legacy_api_tokens_enabled = True\n"
    "    s.save()\n"
)


def ls_venv() -> Path:
    """Where Label Studio's venv is (or will be): env LS_VENV, else /work/lsvenv if present, else <repo>/.lsvenv."""
    if os.environ.get("LS_VENV"):
        return Path(os.environ["LS_VENV"])
    local = Path("/work/lsvenv")
    return local if local.exists() else REPO / ".lsvenv"


def ls_executable(venv: Path | None = None) -> Path:
    return (venv or ls_venv()) / "bin" / "label-studio"


def install_label_studio(venv: Path | None = None) -> Path:
    """`pip install label-studio==1.23.2` into its own venv unless it is already there (~2 min)."""
    venv = venv or ls_venv()
    if not ls_executable(venv).exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", f"label-studio=={LS_VERSION}"], check=True
        )
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabelStudioServer:
    """A running Label Studio: its URL, an admin user with a legacy API token, and its local-files root."""

    url: str
    token: str
    username: str
    password: str
    data_dir: Path
    media_root: Path
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    _session: requests.Session | None = field(default=None, repr=False)

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
            self._session.headers["Authorization"] = f"Token {self.token}"
        return self._session

    def api(
        self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201, 204), **kwargs
    ) -> object:
        """Call the REST API; raise with the server's answer when the status is not expected."""
        kwargs.setdefault("timeout", 300)
        r = self.session.request(method, self.url + path, **kwargs)
        codes = (expect,) if isinstance(expect, int) else expect
        if r.status_code not in codes:
            raise AssertionError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
        return (
            r.json()
            if r.content and r.headers.get("content-type", "").startswith("application/json")
            else None
        )

    def log_tail(self, n: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._session is not None:
            self._session.close()


def _ls_env(data_dir: Path, media_root: Path, username: str, password: str, token: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "VIRTUAL_ENV"))
    }
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=token,
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(media_root),
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        COLLECT_ANALYTICS="false",
    )
    return env


def _manage_py(venv: Path) -> Path:
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import label_studio, os; print(os.path.dirname(label_studio.__file__))",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip()) / "manage.py"


def start_label_studio(
    venv: Path | None = None, workdir: Path | None = None, port: int | None = None
) -> LabelStudioServer:
    """Start Label Studio, wait for /health, enable legacy tokens and check the token works. First start ~70 s."""
    venv = venv or ls_venv()
    if not ls_executable(venv).exists():
        raise FileNotFoundError(f"no Label Studio in {venv}: run tests/ls_server.py install or set LS_VENV")
    workdir = Path(workdir or tempfile.mkdtemp(prefix="decaf-ls-"))
    data_dir, media_root = workdir / "data", workdir / "media"
    data_dir.mkdir(parents=True, exist_ok=True)
    media_root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    username, password, token = "admin@example.com", "admin12345", secrets.token_hex(20)
    env = _ls_env(data_dir, media_root, username, password, token)
    log_path = workdir / "label-studio.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(ls_executable(venv)),
                "start",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-browser",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,  # its own process group, so stop() ends its children too
        )
    server = LabelStudioServer(
        f"http://127.0.0.1:{port}", token, username, password, data_dir, media_root, process, log_path
    )
    try:
        _wait_healthy(server)
        subprocess.run(
            [str(venv / "bin" / "python"), str(_manage_py(venv)), "shell", "-c", _ENABLE_LEGACY_TOKENS],
            env=env,
            check=True,
            capture_output=True,
            cwd=workdir,
            timeout=120,
        )
        server.api("GET", "/api/current-user/whoami")
    except BaseException:
        tail = server.log_tail()
        server.stop()
        raise RuntimeError(f"Label Studio did not start; log tail:\n{tail}") from None
    return server


def _wait_healthy(server: LabelStudioServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise RuntimeError(f"label-studio exited with {server.process.returncode}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"Label Studio not healthy after {START_TIMEOUT_S:.0f} s")


_SHARED: LabelStudioServer | None = None


def shared_server() -> LabelStudioServer:
    """One server per test process, however many fixtures ask for it; stopped when the process exits."""
    global _SHARED
    if _SHARED is None or (_SHARED.process is not None and _SHARED.process.poll() is not None):
        _SHARED = start_label_studio()
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
        srv = start_label_studio()
        print(srv.url, srv.token, srv.media_root, flush=True)
        try:
            srv.process.wait()
        except KeyboardInterrupt:
            srv.stop()
