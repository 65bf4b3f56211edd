"""Install and run a real Label Studio 1.23.2 in its own venv (it pins its own Django stack); HTTP only from here.

Used by `quickstart` and by the end-to-end tests (tests/ls_server.py), so both start Label Studio the same way:
on 127.0.0.1, with local-files serving, the two settings an ML backend on localhost needs (ML_BLOCK_LOCAL_IP=false,
SSRF_PROTECTION_ENABLED=false), and legacy API tokens switched on through the Django shell (they are off by
default in 1.23.2; `label-studio shell -c` wants a file, so manage.py is called directly).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .errors import DecafError

LS_VERSION = "1.23.2"
CHECKOUT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = float(os.environ.get("LS_START_TIMEOUT", "420"))
_ENABLE_LEGACY_TOKENS = (
    "from organizations.models import Organization\n"
    "for o in Organization.objects.all():\n"
    "    s = o.jwt\n"
    "    s.legacy_api_tokens_enabled = True\n"
    "    s.save()\n"
)


class LabelStudioError(DecafError):
    """Label Studio could not be installed, started or called."""


def ls_venv() -> Path:
    """Label Studio's venv: env LS_VENV, else .lsvenv beside a source checkout, else a per-user data folder."""
    if os.environ.get("LS_VENV"):
        return Path(os.environ["LS_VENV"]).expanduser()
    if (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / ".lsvenv"
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "decaf-backend" / "lsvenv"


def ls_executable(venv: Path | None = None) -> Path:
    return (venv or ls_venv()) / "bin" / "label-studio"


def install_label_studio(venv: Path | None = None, log_path: Path | None = None) -> Path:
    """`pip install label-studio==1.23.2` into its own venv unless it is there (~2 min); pip's output goes to
    `log_path` (else inherited). A failed install raises LabelStudioError with the end of pip's output."""
    venv = venv or ls_venv()
    if ls_executable(venv).exists():
        return venv
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"label-studio=={LS_VERSION}"],
    ]
    for step in steps:
        if log_path is None:
            done = subprocess.run(step)
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                done = subprocess.run(step, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            tail = _tail(log_path) if log_path else "(see the output above)"
            raise LabelStudioError(
                f"installing Label Studio {LS_VERSION} into {venv} failed (exit {done.returncode}: "
                f"{' '.join(step[-3:])}):\n{tail}\nFix the cause (network, disk space, Python version) and "
                f"run again, or point LS_VENV at a venv that has label-studio=={LS_VERSION}."
            )
    if not ls_executable(venv).exists():
        raise LabelStudioError(f"pip finished but {ls_executable(venv)} does not exist")
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen there (as servers do, with SO_REUSEADDR: closed connections don't count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


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
        self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201, 204), **kwargs: Any
    ) -> Any:
        """Call the REST API; raise with the server's answer when the status is not expected."""
        kwargs.setdefault("timeout", 300)
        r = self.session.request(method, self.url + path, **kwargs)
        codes = (expect,) if isinstance(expect, int) else expect
        if r.status_code not in codes:
            raise LabelStudioError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
        json_reply = r.headers.get("content-type", "").startswith("application/json")
        return r.json() if r.content and json_reply else None

    def log_tail(self, n: int = 60) -> str:
        return _tail(self.log_path, n) if self.log_path else ""

    def stop(self) -> None:
        """SIGTERM to its whole process group (it starts helpers), SIGKILL after 20 s."""
        if self._session is not None:
            self._session.close()
            self._session = None
        if self.process is not None:
            stop_process_group(self.process)


def start_process_group(
    command: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start a server in its own process group (stop_process_group ends its children too, Ctrl-C does not
    reach it), its output appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """End a process started with start_new_session=True and everything it started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; helpers it left behind in the group must go too
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break
    process.poll()


def ls_environment(
    data_dir: Path, media_root: Path, username: str, password: str, token: str
) -> dict[str, str]:
    """The environment Label Studio runs with: ours minus any LABEL_STUDIO_/DJANGO_ settings, plus its own."""
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
        ML_BLOCK_LOCAL_IP="false",  # the ML URL check refuses 127.0.0.1 otherwise
        SSRF_PROTECTION_ENABLED="false",  # ... and so does the webhook Label Studio makes for the backend
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",  # no error reports leave the machine
        FRONTEND_SENTRY_DSN="",
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


def new_credentials() -> dict[str, str]:
    """An admin login and a 40-hex legacy token (what LABEL_STUDIO_USER_TOKEN expects)."""
    return {
        "username": "admin@example.com",
        "password": secrets.token_urlsafe(12),
        "token": secrets.token_hex(20),
    }


def start_label_studio(
    workdir: Path,
    port: int | None = None,
    venv: Path | None = None,
    credentials: dict[str, str] | None = None,
) -> LabelStudioServer:
    """Start Label Studio with its data under `workdir` (data/, media/, label-studio.log), wait for /health,
    enable legacy tokens and check the token works. First start ~70 s (migrations), later ones a few seconds.
    The admin user is made on the first start; later starts must pass the same credentials."""
    venv = venv or ls_venv()
    if not ls_executable(venv).exists():
        raise LabelStudioError(f"no Label Studio in {venv}: run scripts/setup, or set LS_VENV")
    workdir = Path(workdir)
    data_dir, media_root = workdir / "data", workdir / "media"
    data_dir.mkdir(parents=True, exist_ok=True)
    media_root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if not port_is_free(port):
        raise LabelStudioError(
            f"port {port} on 127.0.0.1 is in use: stop what runs there or pick another port"
        )
    creds = credentials or {
        "username": "admin@example.com",
        "password": "admin12345",
        "token": secrets.token_hex(20),
    }
    env = ls_environment(data_dir, media_root, creds["username"], creds["password"], creds["token"])
    log_path = workdir / "label-studio.log"
    command = [
        str(ls_executable(venv)),
        "start",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-browser",
    ]
    process = start_process_group(command, env, log_path, cwd=workdir)
    server = LabelStudioServer(
        f"http://127.0.0.1:{port}", creds["token"], creds["username"], creds["password"], data_dir, media_root,
        process, log_path,
    )  # fmt: skip
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
    except BaseException as exc:
        tail = server.log_tail()
        server.stop()
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise LabelStudioError(f"Label Studio did not start ({exc}); end of {log_path}:\n{tail}") from None
    return server


def _wait_healthy(server: LabelStudioServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            raise LabelStudioError(f"label-studio exited with {server.process.returncode}")
        try:
            if requests.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise LabelStudioError(f"Label Studio not healthy after {START_TIMEOUT_S:.0f} s")


def _tail(path: Path | None, n: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
