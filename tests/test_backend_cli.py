"""Settings from the environment, the `serve` command as a real process, and import-videos' frame sampling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from decaf_backend.backend.errors import MediaError
from decaf_backend.backend.importer import ImportOptions, extract_frames, sampled_frames, video_files
from decaf_backend.backend.settings import Settings
from decaf_backend.errors import DecafError
from tests.conftest import encode_video, moving_disc_frames
from tests.ls_server import free_port

REPO = Path(__file__).resolve().parents[1]


def test_settings_read_the_documented_variables() -> None:
    env = {
        "LABEL_STUDIO_URL": "http://ls:8080",
        "BASIC_AUTH_USER": "u",
        "MODEL_DIR": "/tmp/x",
        "PORT": "9191",
        "DECAF_OPEN_WAIT_S": "2.5",
        "DECAF_SKIP_EMPTY_MASKS": "yes",
        "DECAF_MAX_FRAMES": "",  # empty = default
    }
    s = Settings.from_env(env, host="127.0.0.1")
    assert (s.label_studio_url, s.basic_auth_user, s.model_dir, s.port, s.host) == (
        "http://ls:8080",
        "u",
        Path("/tmp/x"),
        9191,
        "127.0.0.1",
    )
    assert s.open_wait_s == 2.5 and s.skip_empty_masks is True and s.max_frames == Settings().max_frames
    assert Settings.from_env({"LABEL_STUDIO_API_KEY": "k"}).label_studio_api_key == "k"
    with pytest.raises(DecafError, match="DECAF_BATCH_WAIT_S='soon' is not a valid float"):
        Settings.from_env({"DECAF_BATCH_WAIT_S": "soon"})
    with pytest.raises(DecafError, match="DECAF_PRELOAD='maybe'"):
        Settings.from_env({"DECAF_PRELOAD": "maybe"})


def _wait_for_health(port: int, timeout_s: float = 60.0) -> dict | None:
    """The /health reply of the server starting on `port`; None if it does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
        except requests.RequestException:
            time.sleep(0.2)
    return None


def test_serve_command_answers_health_without_auth_and_guards_the_rest(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "MODEL_DIR": str(tmp_path),
        "BASIC_AUTH_USER": "u",
        "BASIC_AUTH_PASS": "p",
    }
    proc = subprocess.Popen([sys.executable, "-m", "decaf_backend", "serve", "--no-preload"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        health = _wait_for_health(port)
        assert health is not None and health["status"] == "UP" and health["model_loaded"] is False
        assert requests.post(f"http://127.0.0.1:{port}/setup", json={}, timeout=5).status_code == 401
        ok = requests.post(f"http://127.0.0.1:{port}/setup", json={}, auth=("u", "p"), timeout=5)
        assert ok.status_code == 200 and ok.json()["model_version"].startswith("decaf-")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_frame_sampling_by_stride_and_fps(tmp_path: Path) -> None:
    video = encode_video(tmp_path / "clip.mp4", moving_disc_frames(10, 32, 48), fps=10)
    assert [i for i, _ in sampled_frames(video, stride=3)] == [0, 3, 6, 9]
    assert [i for i, _ in sampled_frames(video, fps=4)] == [0, 3, 5, 8]  # every 2.5 frames
    assert [i for i, _ in sampled_frames(video, fps=50)] == list(range(10))  # never more than the video has
    files = extract_frames(video, tmp_path / "out", ImportOptions(stride=4, image_format="png"))
    assert [f.name for f in files] == ["clip_000000.png", "clip_000004.png", "clip_000008.png"]
    with pytest.raises(MediaError, match="stride"):
        list(sampled_frames(video, stride=0))


def test_video_files_from_folders_and_clear_errors(tmp_path: Path) -> None:
    a = encode_video(tmp_path / "b.mp4", moving_disc_frames(3, 16, 16))
    b = encode_video(tmp_path / "a.mp4", moving_disc_frames(3, 16, 16))
    (tmp_path / "notes.txt").write_text("x")
    assert video_files([tmp_path]) == [b, a]
    with pytest.raises(MediaError, match="does not exist"):
        video_files([tmp_path / "missing.mp4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MediaError, match="no video files"):
        video_files([tmp_path / "empty"])


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BASIC_AUTH_", "DECAF_ALLOW_", "HOST", "PORT"))
    }
    return {**env, "MODEL_DIR": str(tmp_path), "PYTHONPATH": str(REPO), **extra}


@pytest.mark.parametrize(
    "args, extra, message",
    [
        ([], {}, "refusing to serve on 0.0.0.0:"),  # the default address, no credentials
        (["--host", "192.0.2.1"], {"BASIC_AUTH_USER": "u"}, "BASIC_AUTH_PASS is empty"),
        (
            ["--host", "127.0.0.1"],
            {"BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": ""},
            "BASIC_AUTH_PASS is empty",
        ),
        (["--host", "::"], {"BASIC_AUTH_PASS": "p"}, "BASIC_AUTH_USER is empty"),
        (
            ["--host", "192.0.2.1"],
            {"DECAF_ALLOW_UNAUTHENTICATED": "false"},
            "DECAF_ALLOW_UNAUTHENTICATED=true",
        ),
    ],
)
def test_serve_refuses_to_start_open_to_others(tmp_path: Path, args: list, extra: dict, message: str) -> None:
    """Refused before anything listens: the process exits with the reason and what to set."""
    done = subprocess.run(
        [sys.executable, "-m", "decaf_backend", "serve", "--no-preload", "--port", str(free_port()), *args],
        cwd=REPO, env=_serve_env(tmp_path, **extra), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_serve_on_loopback_without_auth_starts_and_warns(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "decaf_backend", "serve", "--no-preload", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=_serve_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        health = _wait_for_health(port)
        assert health is not None and health["status"] == "UP"
        assert requests.post(f"http://127.0.0.1:{port}/setup", json={}, timeout=5).status_code == 200
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0]
    assert "without authentication: only this machine can reach it" in output


def test_access_rules_allow_an_explicit_opt_out() -> None:
    from decaf_backend.backend.settings import AccessError, check_serving_access, is_loopback_host

    assert [is_loopback_host(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost")] == [
        True
    ] * 5
    assert [is_loopback_host(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com", "")] == [False] * 5
    opened = Settings.from_env({"DECAF_ALLOW_UNAUTHENTICATED": "true"})
    assert "WITHOUT authentication" in (check_serving_access(opened) or "")
    assert check_serving_access(Settings(basic_auth_user="u", basic_auth_pass="p")) is None
    with pytest.raises(AccessError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
        check_serving_access(Settings())


def test_docker_setup_generates_and_requires_the_credentials() -> None:
    """make-env.sh fills every secret of example.env with a fresh value; compose refuses an empty password; the
    backend in its container (0.0.0.0) starts with the generated settings and refuses without them."""
    from decaf_backend.backend.settings import AccessError, check_serving_access

    def parse(text: str) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
        return {k: v for k, v in pairs}

    made = [
        parse(subprocess.run(["sh", str(REPO / "docker" / "make-env.sh")], capture_output=True, text=True,
                             check=True).stdout)
        for _ in range(2)
    ]  # fmt: skip
    secrets = ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_API_KEY", "BASIC_AUTH_PASS", "WEBHOOK_SECRET")
    assert all(env[k] and made[0][k] != made[1][k] for env in made for k in secrets)
    assert len(made[0]["LABEL_STUDIO_API_KEY"]) == 40 and int(made[0]["LABEL_STUDIO_API_KEY"], 16) >= 0
    assert check_serving_access(Settings.from_env(made[0], host="0.0.0.0")) is None
    example = parse((REPO / "docker" / "example.env").read_text())
    with pytest.raises(AccessError):
        check_serving_access(Settings.from_env(example, host="0.0.0.0"))
    compose = (REPO / "docker" / "docker-compose.yml").read_text()
    assert "BASIC_AUTH_PASS: ${BASIC_AUTH_PASS:?" in compose and '"127.0.0.1:${DECAF_PORT' in compose
