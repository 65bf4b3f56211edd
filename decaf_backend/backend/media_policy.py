"""Where task media may come from (the trust policy), decided before any byte is fetched.

Task data is written by whoever can create tasks, and the backend fetches what it names, so every media URL is
checked here first (docs/security.md):

- http(s) URLs only from Label Studio's origin (scheme, host and port of LABEL_STUDIO_URL) or under one of the
  DECAF_MEDIA_ALLOWED_PREFIXES; Label Studio's relative forms (/data/upload/..., /data/local-files/?d=...,
  /storage-data/..., s3:// gs:// azure-blob:// through its presign route) resolve to its origin;
- when a connection is made, every address the host name resolves to is checked: loopback, private, link-local
  and other non-public addresses are refused unless the host and port are Label Studio's, or an allowed prefix's
  written as an address, `localhost` or a one-word name (see `address_allowed`); redirects go through the same
  checks;
- local-files paths stay under LOCAL_FILES_DOCUMENT_ROOT (symlinks resolved first) and must be regular files.

The token goes only to Label Studio's own origin.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from label_studio_sdk._extensions.label_studio_tools.core.utils.io import encode_presign_fileuri

from .errors import MediaError

CLOUD_SCHEMES = ("s3:", "gs:", "azure-blob:")
LABEL_STUDIO_MEDIA_PATHS = ("/data/", "/storage-data/")  # relative task URLs Label Studio serves media under
_SECRET_PARAM = re.compile(r"sig|signature|token|key|credential|secret|pass|auth|session", re.IGNORECASE)


class MediaRefused(MediaError):
    """The task names media the trust policy does not allow (nothing was fetched)."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{_host_text(self.host)}:{self.port}"


@dataclass(frozen=True)
class Prefix:
    origin: Origin
    path: str  # "" (the whole origin) or a path ending in "/"

    def covers(self, origin: Origin, path: str) -> bool:
        return origin == self.origin and path.startswith(self.path or "/")


@dataclass(frozen=True)
class LocalFile:
    """A local-files URL served from LOCAL_FILES_DOCUMENT_ROOT: `path` is checked and resolved."""

    path: Path


@dataclass(frozen=True)
class Remote:
    """What to GET: `urls` in order (a fallback after an HTTP error), and whether they carry the token."""

    urls: tuple[str, ...]


def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise MediaRefused(f"{redact_url(url)}: only http(s) URLs with a host can be fetched")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise MediaRefused(f"{redact_url(url)}: the port is not a number") from None
    return Origin(scheme, parts.hostname.lower().rstrip("."), port)


def parse_prefixes(text: str) -> tuple[Prefix, ...]:
    """DECAF_MEDIA_ALLOWED_PREFIXES: http(s) URL prefixes separated by commas or spaces."""
    prefixes = []
    for raw in re.split(r"[,\s]+", text.strip()):
        if not raw:
            continue
        try:
            origin = origin_of(raw)
        except MediaRefused:
            raise MediaError(
                f"DECAF_MEDIA_ALLOWED_PREFIXES: {raw!r} is not an http(s) URL prefix with a host"
            ) from None
        path = urlsplit(raw).path
        if path and not path.endswith("/"):
            path += "/"  # "/media" must not allow "/media-private"
        prefixes.append(Prefix(origin, "" if path == "/" else path))
    return tuple(prefixes)


def redact_url(url: object, limit: int = 160) -> str:
    """A URL fit for logs and error messages: no user:password, no values of secret-looking query parameters."""
    text = url.decode(errors="replace") if isinstance(url, bytes) else str(url)
    try:
        parts = urlsplit(text)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        query = "&".join(
            f"{name}=***" if _SECRET_PARAM.search(name) else pair
            for pair in parts.query.split("&")
            if pair
            for name in [pair.split("=", 1)[0]]
        )
        text = urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    except ValueError:
        text = "<unparsable URL>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names_a_local_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost" or "." not in host


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class MediaPolicy:
    """The policy for one Label Studio origin (None when no Label Studio URL is known)."""

    def __init__(
        self,
        label_studio_url: str | None,
        allowed_prefixes: tuple[Prefix, ...] = (),
        local_root: Path | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.label_studio_url = (label_studio_url or "").rstrip("/")
        self.origin = origin_of(self.label_studio_url) if self.label_studio_url else None
        self.prefixes = allowed_prefixes
        self.local_root = Path(os.path.realpath(local_root)) if local_root else None
        if self.local_root is not None and self.local_root == Path(self.local_root.anchor):
            raise MediaError("LOCAL_FILES_DOCUMENT_ROOT must not be the file system root")
        self.max_bytes = max_bytes
        # (host, port) pairs that may have non-public addresses: Label Studio's, and prefixes written as an
        # address, localhost or a one-word (compose service) name; a dotted name must resolve to public addresses
        local = [p.origin for p in self.prefixes if _names_a_local_host(p.origin.host)]
        self._local_ok = {(o.host, o.port) for o in [self.origin, *local] if o}

    # URLs -------------------------------------------------------------------------------------------------
    def plan(self, url: str, task_id: object = None) -> LocalFile | Remote:
        """How to get a task URL, or MediaRefused naming why it may not be fetched."""
        if not isinstance(url, str) or not url.strip():
            raise MediaRefused(f"media URL {url!r} is empty or not text")
        url = url.strip()
        if url.startswith(("upload/", "/upload/")):
            url = "/data/" + url.lstrip("/")
        lower = url.lower()
        if lower.startswith(CLOUD_SCHEMES):
            if task_id is None:
                raise MediaRefused(f"{redact_url(url)}: cloud storage media needs the task id")
            return Remote(
                (self._on_label_studio(f"/tasks/{task_id}/presign/?fileuri={encode_presign_fileuri(url)}"),)
            )
        if lower.startswith(("http://", "https://")):
            self.check_url(url)
            return Remote((url,))
        if not url.startswith("/") or url.startswith("//"):
            raise MediaRefused(
                f"media URL {redact_url(url)} is neither a Label Studio path nor an http(s) URL "
                "(file paths and other schemes are never read)"
            )
        path = urlsplit(url).path
        if not path.startswith(LABEL_STUDIO_MEDIA_PATHS) or ".." in unquote(path).split("/"):
            # our token must not fetch arbitrary Label Studio pages (its API) on behalf of a task
            raise MediaRefused(
                f"media URL {redact_url(url)} is not a Label Studio media path "
                f"({', '.join(LABEL_STUDIO_MEDIA_PATHS)}) nor an http(s) URL"
            )
        if path.startswith("/data/local-files"):
            relative = _local_files_param(url)
            if self.local_root is not None:
                candidate = self.local_path(relative)
                if candidate is not None:
                    return LocalFile(candidate)
            return Remote((self._on_label_studio(url),))
        if path.startswith("/data/upload/"):
            stored = path[len("/data/") :]
            # Label Studio 1.23 serves uploads through its storage proxy (also for cloud default storage);
            # /data/upload/ is the older route, tried when the proxy answers with an error
            return Remote(
                (
                    self._on_label_studio(f"/storage-data/uploaded/?filepath={stored}"),
                    self._on_label_studio(url),
                )
            )
        return Remote((self._on_label_studio(url),))

    def _on_label_studio(self, relative: str) -> str:
        if not self.label_studio_url:
            raise MediaRefused(
                f"{redact_url(relative)} is a Label Studio path, but LABEL_STUDIO_URL is not set: "
                "the backend cannot know where to fetch it"
            )
        return self.label_studio_url + "/" + relative.lstrip("/")

    def check_url(self, url: str) -> None:
        """MediaRefused unless `url` is on Label Studio's origin or under an allowed prefix."""
        origin = origin_of(url)
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise MediaRefused(f"{redact_url(url)}: URLs with a user name or password are not fetched")
        if origin == self.origin:
            return
        path = parts.path or "/"
        if ".." in unquote(path).split("/"):
            raise MediaRefused(f"{redact_url(url)}: '..' in the path of a media URL is not allowed")
        if any(prefix.covers(origin, path) for prefix in self.prefixes):
            return
        where = (
            f"Label Studio ({self.origin})" if self.origin else "Label Studio (LABEL_STUDIO_URL is not set)"
        )
        raise MediaRefused(
            f"media URL {redact_url(url)} is not allowed: it is not on {where} nor under "
            "DECAF_MEDIA_ALLOWED_PREFIXES"
        )

    def sends_token(self, url: str) -> bool:
        try:
            return self.origin is not None and origin_of(url) == self.origin
        except MediaRefused:
            return False

    # addresses --------------------------------------------------------------------------------------------
    def address_allowed(self, host: str, port: int, address: str) -> bool:
        """Public addresses are fine; others (loopback, private, link-local, ...) only for Label Studio's host and
        port or an allowed prefix that names a local host (see __init__)."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global and not ip.is_multicast:
            return True
        return (host.lower().strip("[]").rstrip("."), port) in self._local_ok

    # local files ------------------------------------------------------------------------------------------
    def local_path(self, relative: str) -> Path | None:
        """The file under the local-files root (None when absent there); MediaRefused when it would leave it."""
        assert self.local_root is not None
        clean = posixpath.normpath("/" + relative).lstrip(
            "/"
        )  # as Label Studio's view: always under the root
        real = Path(os.path.realpath(self.local_root / clean))
        if real != self.local_root and self.local_root not in real.parents:
            raise MediaRefused(f"local file {relative!r} leads out of LOCAL_FILES_DOCUMENT_ROOT (a link?)")
        return real if os.path.lexists(real) else None

    def open_local(self, path: Path) -> tuple[int, int]:
        """(fd, size) of a checked local file: a regular file, within the size limit; never a device or pipe."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(
                path, flags
            )  # O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: no late link swap
        except OSError as exc:
            raise MediaError(f"local file {path.name} cannot be opened ({exc.strerror})") from exc
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise MediaRefused(f"local file {path.name} is not a regular file (a device, pipe or folder)")
        if self.max_bytes is not None and info.st_size > self.max_bytes:
            os.close(fd)
            raise MediaError(
                f"local file {path.name} is {info.st_size / 2**20:.1f} MB, over the "
                f"{self.max_bytes / 2**20:.0f} MB limit (DECAF_MAX_MEDIA_MB)"
            )
        os.set_blocking(fd, True)
        return fd, info.st_size


def _local_files_param(url: str) -> str:
    values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d")
    relative = values[-1] if values else ""  # the last value wins, as in Label Studio's view
    if not relative:
        raise MediaRefused(f"{redact_url(url)}: a local-files URL without a file path (?d=...)")
    return relative
