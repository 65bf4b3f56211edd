"""The media trust policy against real HTTP servers on 127.0.0.1: a stand-in for a private host (must see no
request), an allowed prefix, redirects, local-files reads, streaming under the size limit, the disk cache budget."""

from __future__ import annotations

import os
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from decaf_backend.backend.errors import MediaError
from decaf_backend.backend.media import MediaFetcher
from decaf_backend.backend.media_policy import MediaPolicy, MediaRefused, parse_prefixes, redact_url
from decaf_backend.backend.schema import parse_schema
from decaf_backend.backend.settings import Settings
from decaf_backend.errors import VideoError
from tests.backend_helpers import (
    FakeLabelStudio,
    colour_client,
    disc_and_square_frames,
    write_frames,
)
from tests.conftest import encode_video

VIDEO_CONFIG = (Path(__file__).resolve().parents[1] / "label_config" / "video_tracks.xml").read_text()


class FileServer:
    """Serves `routes` {path: (status, headers, body)} on 127.0.0.1 and records every request it gets."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]] | None = None) -> None:
        self.routes = routes or {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Authorization")))
                status, headers, body = server.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Transfer-Encoding" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if headers.get("Transfer-Encoding") == "chunked":
                    for start in range(0, len(body), 1 << 16):
                        part = body[start : start + (1 << 16)]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return encode_video(path, disc_and_square_frames(4, 32, 48), fps=10).read_bytes()


@pytest.fixture
def servers(tmp_path: Path, clip: bytes) -> Iterator[tuple[FakeLabelStudio, FileServer, FileServer]]:
    """Label Studio, an allowed prefix host, and a 'private host' that must never be asked."""
    (tmp_path / "ls" / "upload" / "1").mkdir(parents=True)
    (tmp_path / "ls" / "upload" / "1" / "clip.mp4").write_bytes(clip)
    label_studio = FakeLabelStudio(tmp_path / "ls")
    private = FileServer({"/secret.mp4": (200, {}, clip)})
    allowed = FileServer({"/ok/clip.mp4": (200, {}, clip)})
    yield label_studio, allowed, private
    for server in (label_studio, allowed, private):
        server.close()


def _fetcher(tmp_path: Path, label_studio: FakeLabelStudio, **kw: Any) -> MediaFetcher:
    settings = Settings(
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        model_dir=tmp_path / "model_dir",
        **kw,
    )
    return MediaFetcher(settings)


def _video_task(url: str, tid: int = 1) -> dict:
    return {"id": tid, "data": {"video": url, "prompt": "the red disc"}}


def test_a_task_pointing_at_a_private_host_is_refused_and_the_host_sees_no_request(
    servers: Any, tmp_path: Path
) -> None:
    label_studio, allowed, private = servers
    fetcher = _fetcher(tmp_path, label_studio, media_allowed_prefixes=f"{allowed.url}/ok/")
    schema = parse_schema(VIDEO_CONFIG)
    for url in (
        f"{private.url}/secret.mp4",
        f"http://localhost:{private.port}/secret.mp4",
        f"http://[::ffff:127.0.0.1]:{private.port}/secret.mp4",
        f"{allowed.url}/other/clip.mp4",  # same host and port as the prefix, outside its path
        f"{allowed.url}/ok/../secret.mp4",
        f"http://user:pw@127.0.0.1:{allowed.port}/ok/clip.mp4",
        "file:///etc/passwd",
        "/etc/passwd",
        "ftp://127.0.0.1/x.mp4",
    ):
        with pytest.raises(
            MediaRefused,
            match="not allowed|never read|not a Label Studio media path|only http|user name|'..'",
        ) as err:
            fetcher.open(_video_task(url), schema)
        assert "task 1" in str(err.value)
    assert private.requests == [] and allowed.requests == []
    assert not list((tmp_path / "model_dir" / "media").rglob("*.part"))


def test_the_allowed_prefix_and_label_studio_are_fetched_and_only_label_studio_gets_the_token(
    servers: Any, tmp_path: Path, clip: bytes
) -> None:
    label_studio, allowed, private = servers
    fetcher = _fetcher(tmp_path, label_studio, media_allowed_prefixes=f"  {allowed.url}/ok , ")
    schema = parse_schema(VIDEO_CONFIG)
    media = fetcher.open(_video_task(f"{allowed.url}/ok/clip.mp4"), schema)
    assert media.path.read_bytes() == clip and media.info.num_frames == 4
    assert allowed.requests == [("/ok/clip.mp4", None)]  # the Label Studio token stays with Label Studio
    uploaded = fetcher.open(_video_task("/data/upload/1/clip.mp4", 2), schema)
    assert uploaded.path.read_bytes() == clip
    assert label_studio.requests[-1][2] == f"Token {label_studio.token}"
    assert private.requests == []


def test_a_redirect_from_an_allowed_place_to_a_disallowed_one_is_refused(
    servers: Any, tmp_path: Path, clip: bytes
) -> None:
    label_studio, allowed, private = servers
    allowed.routes["/ok/away.mp4"] = (302, {"Location": f"{private.url}/secret.mp4"}, b"")
    allowed.routes["/ok/relative.mp4"] = (301, {"Location": "/ok/clip.mp4"}, b"")
    allowed.routes["/ok/loop.mp4"] = (302, {"Location": "/ok/loop.mp4"}, b"")
    fetcher = _fetcher(tmp_path, label_studio, media_allowed_prefixes=f"{allowed.url}/ok/")
    with pytest.raises(MediaRefused, match="is not allowed"):
        fetcher.download(f"{allowed.url}/ok/away.mp4", 5)
    assert private.requests == []
    assert Path(fetcher.download(f"{allowed.url}/ok/relative.mp4", 5)).read_bytes() == clip
    with pytest.raises(MediaError, match="redirects"):
        fetcher.download(f"{allowed.url}/ok/loop.mp4", 5)


def test_a_dotted_name_that_resolves_to_a_private_address_is_refused_before_connecting(
    servers: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS stand-in: media.example.com resolves to 127.0.0.1 (rebinding). A prefix written as a dotted name
    allows public addresses only; the same server named by its address in the prefix is fetched."""
    label_studio, _, private = servers
    real = socket.getaddrinfo

    def fake_dns(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "media.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_dns)
    fetcher = _fetcher(
        tmp_path, label_studio, media_allowed_prefixes=f"http://media.example.com:{private.port}/"
    )
    with pytest.raises(MediaRefused, match="loopback, private or link-local"):
        fetcher.download(f"http://media.example.com:{private.port}/secret.mp4", 7)
    assert private.requests == []
    named = _fetcher(tmp_path / "b", label_studio, media_allowed_prefixes=f"{private.url}/")
    assert Path(named.download(f"{private.url}/secret.mp4", 7)).stat().st_size > 0


def test_address_rules() -> None:
    policy = MediaPolicy(
        "http://label-studio:8080", parse_prefixes("https://cdn.example.com/v/ http://10.1.2.3:9000/b/")
    )
    assert policy.address_allowed("label-studio", 8080, "172.18.0.2")  # compose network: Label Studio itself
    assert not policy.address_allowed("label-studio", 8081, "172.18.0.2")  # another port of that host
    assert policy.address_allowed("cdn.example.com", 443, "93.184.216.34")
    for address in (
        "127.0.0.1",
        "10.0.0.8",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "0.0.0.0",
        "::ffff:10.0.0.1",
    ):
        assert not policy.address_allowed("cdn.example.com", 443, address), address
    assert policy.address_allowed("10.1.2.3", 9000, "10.1.2.3")  # the operator wrote this address
    with pytest.raises(MediaError, match="not an http"):
        parse_prefixes("cdn.example.com/v")
    assert (
        redact_url("https://u:pw@s3.x/a.mp4?X-Amz-Signature=abc&d=1")
        == "https://s3.x/a.mp4?X-Amz-Signature=***&d=1"
    )


def test_downloads_stream_to_disk_under_the_size_limit(servers: Any, tmp_path: Path) -> None:
    label_studio, allowed, _ = servers
    big = np.random.default_rng(0).integers(0, 255, 24 << 20, dtype=np.uint8).tobytes()
    allowed.routes["/ok/big.bin"] = (200, {}, big)
    allowed.routes["/ok/chunked.bin"] = (200, {"Transfer-Encoding": "chunked"}, big)
    fetcher = _fetcher(tmp_path, label_studio, media_allowed_prefixes=f"{allowed.url}/ok/", max_media_mb=64)
    tracemalloc.start()
    try:
        path = Path(fetcher.download(f"{allowed.url}/ok/chunked.bin", 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert path.stat().st_size == len(big) and peak < 8 << 20  # 24 MB through at most a few 1 MB chunks
    small = _fetcher(
        tmp_path / "s", label_studio, media_allowed_prefixes=f"{allowed.url}/ok/", max_media_mb=4
    )
    for name in ("big.bin", "chunked.bin"):  # declared size, then counted size (no Content-Length)
        with pytest.raises(MediaError, match="over the 4 MB limit"):
            small.download(f"{allowed.url}/ok/{name}", 3)
    leftovers = [p for p in (tmp_path / "s" / "model_dir" / "media").rglob("*") if p.is_file()]
    assert leftovers == []  # no partial file


def test_local_files_stay_under_the_root_and_are_regular_files(
    servers: Any, tmp_path: Path, clip: bytes
) -> None:
    label_studio, _, _ = servers
    root = tmp_path / "root"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "clip.mp4").write_bytes(clip)
    (tmp_path / "outside.mp4").write_bytes(clip)
    (root / "videos" / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    (root / "videos" / "inside.mp4").symlink_to(root / "videos" / "clip.mp4")
    (root / "videos" / "zero.mp4").symlink_to("/dev/zero")
    os.mkfifo(root / "videos" / "pipe.mp4")
    fetcher = _fetcher(tmp_path, label_studio, local_files_document_root=str(root))
    read = lambda rel: Path(fetcher.download(f"/data/local-files/?d={rel}", 1))  # noqa: E731
    assert read("videos/clip.mp4").read_bytes() == clip
    assert read("videos/inside.mp4").read_bytes() == clip  # a link that stays inside is fine
    for rel, message in (
        ("videos/escape.mp4", "leads out of LOCAL_FILES_DOCUMENT_ROOT"),
        ("videos/zero.mp4", "leads out of LOCAL_FILES_DOCUMENT_ROOT"),
        ("videos/pipe.mp4", "not a regular file"),  # and opening it did not hang
        ("videos", "not a regular file"),
    ):
        with pytest.raises(MediaError, match=message):
            read(rel)
    # '..' is normalised under the root as Label Studio does; absent there, it is asked from Label Studio (404)
    with pytest.raises(MediaError, match="HTTP 404"):
        read("../outside.mp4")
    assert label_studio.requests[-1][1] == "/data/local-files/?d=../outside.mp4"
    limited = _fetcher(tmp_path / "l", label_studio, local_files_document_root=str(root), max_media_mb=0.001)
    with pytest.raises(MediaError, match="over the 0 MB limit"):
        limited.download("/data/local-files/?d=videos/clip.mp4", 1)


def test_media_cache_keeps_its_byte_budget_and_spares_files_in_use(
    servers: Any, tmp_path: Path, clip: bytes
) -> None:
    label_studio, allowed, _ = servers
    for i in range(4):
        allowed.routes[f"/ok/c{i}.mp4"] = (200, {}, clip)
    budget_mb = 2.5 * len(clip) / 2**20  # room for two videos
    fetcher = _fetcher(
        tmp_path, label_studio, media_allowed_prefixes=f"{allowed.url}/ok/", media_cache_mb=budget_mb
    )
    schema = parse_schema(VIDEO_CONFIG)
    held = fetcher.open(_video_task(f"{allowed.url}/ok/c0.mp4", 10), schema)  # a live reader
    for i in (1, 2, 3):
        fetcher.download(f"{allowed.url}/ok/c{i}.mp4", 10 + i)
    videos = tmp_path / "model_dir" / "media" / "videos"
    names = sorted(next(p.iterdir()).name for p in videos.iterdir())
    assert names == ["c0.mp4", "c2.mp4", "c3.mp4"]  # c1 went; c0 is read by a live reader, so it stays
    assert fetcher.disk.bytes <= budget_mb * 2**20 and fetcher.disk.evictions == 2
    fetcher._readers.clear()
    held.reader.close()
    del held
    fetcher.disk.sweep()
    assert sorted(next(p.iterdir()).name for p in videos.iterdir()) == ["c2.mp4", "c3.mp4"]
    # a restart reads the budget back from disk, oldest first
    again = _fetcher(
        tmp_path, label_studio, media_allowed_prefixes=f"{allowed.url}/ok/", media_cache_mb=budget_mb
    )
    assert again.disk.bytes == 2 * len(clip)
    again.download(f"{allowed.url}/ok/c1.mp4", 11)
    assert sorted(next(p.iterdir()).name for p in videos.iterdir()) == ["c1.mp4", "c3.mp4"]


def test_the_server_refuses_private_media_per_task_and_keeps_serving(servers: Any, tmp_path: Path) -> None:
    label_studio, _, private = servers
    settings = Settings(
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        model_dir=tmp_path / "model_dir",
        preload=False,
        batch_wait_s=30.0,
        open_wait_s=30.0,
    )
    client = colour_client(settings)
    write_frames(tmp_path / "ls" / "frames", disc_and_square_frames(3, 32, 48))
    tasks = [_video_task(f"{private.url}/secret.mp4", 1), _video_task("/data/upload/1/clip.mp4", 2)]
    body = {"tasks": tasks, "label_config": VIDEO_CONFIG, "project": "1.1"}
    reply = client.post("/predict", json=body)
    assert reply.status_code == 200
    first, second = reply.get_json()["results"]
    assert not (first or {}).get("result") and second["result"]  # the refused task only
    assert private.requests == []
    assert "decaf_task_failures_total 1" in client.get("/metrics").get_data(as_text=True)
    context = {"result": [{"type": "videorectangle", "value": {"sequence": []}}]}
    refused = client.post("/predict", json=dict(body, tasks=tasks[:1], params={"context": context}))
    assert refused.status_code == 422 and "is not allowed" in refused.get_json()["error"]
    assert private.requests == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_frame_declaring_a_huge_size_is_refused_before_decoding(servers: Any, tmp_path: Path) -> None:
    """A 60-byte BMP whose header says 10000x10000 (300 MB as RGB; under PIL's own bomb limit): refused from its
    header."""
    label_studio, _, _ = servers
    header = b"BM" + (60).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little")
    info = (40).to_bytes(4, "little") + (10000).to_bytes(4, "little") * 2 + (1).to_bytes(2, "little")
    info += (24).to_bytes(2, "little") + bytes(24)
    folder = tmp_path / "ls" / "frames"
    folder.mkdir(parents=True)
    (folder / "huge.bmp").write_bytes(header + info + bytes(6))
    fetcher = _fetcher(tmp_path, label_studio)
    schema = parse_schema(
        (Path(__file__).resolve().parents[1] / "label_config" / "frames_masks.xml").read_text()
    )
    task = {"id": 4, "data": {"frames": ["/data/local-files/?d=frames/huge.bmp"], "prompt": "x"}}
    with pytest.raises(VideoError, match=r"10000x10000 .*more than the limit"):
        fetcher.open(task, schema)
    assert not list((tmp_path / "model_dir" / "media").rglob("*.png"))
