"""Fetching one media file to disk under the trust policy: streamed in chunks, size-limited, redirects re-checked.

Connections are made by `_CheckedConnection`: it resolves the host name itself, checks every address with the
policy (`MediaPolicy.address_allowed`) and connects to the checked address, so a name that resolves (or
re-resolves) to a private address is refused before any byte is sent. No proxy or .netrc from the environment is
used: a proxy would connect on our behalf, out of reach of that check.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from label_studio_sdk._extensions.label_studio_tools.core.utils.io import is_jwt_well_formed
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import MediaError
from .media_policy import LocalFile, MediaPolicy, MediaRefused, Remote, redact_url

MAX_REDIRECTS = 5
CHUNK = 1 << 20
AddressCheck = Callable[[str, int, str], bool]


class _Refused(OSError):
    """Raised inside a connection attempt; requests wraps it, `fetch` unwraps it into MediaRefused."""


def _connect_checked(conn: HTTPConnection, check: AddressCheck) -> socket.socket:
    host, port = conn._dns_host, conn.port  # type: ignore[attr-defined]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve host {host!r} ({exc.strerror})") from exc
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    refused = [a for a in addresses if not check(conn.host, port, a)]
    if refused:  # all or nothing: a name with one private address among public ones is refused too
        raise _Refused(
            f"{conn.host}:{port} resolves to {refused[0]}, a loopback, private or link-local address that is not "
            "Label Studio's nor an allowed prefix's"
        )
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), conn.timeout, conn.source_address)
        except OSError as exc:
            last = exc
    raise last or OSError(f"no address for {host!r}")


def _checked_adapter(check: AddressCheck) -> HTTPAdapter:
    class Connection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_checked(self, check)

    class SecureConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return _connect_checked(self, check)

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = SecureConnection

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": SecurePool}

    return Adapter(max_retries=0)


def policy_session(policy: MediaPolicy) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment (see the module docstring)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = _checked_adapter(policy.address_allowed)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _auth_header(token: str) -> dict[str, str]:
    # a Personal Access Token (a JWT) goes as Bearer, a legacy token as Token: what Label Studio accepts
    return {"Authorization": ("Bearer " if is_jwt_well_formed(token) else "Token ") + token}


def fetch(
    url: str,
    dest: Path,
    policy: MediaPolicy,
    token: str | None,
    timeout: float,
    task_id: object = None,
) -> Path:
    """Write the media of a task URL to `dest` (atomically: a temp file renamed; none left on failure)."""
    plan = policy.plan(url, task_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        if isinstance(plan, LocalFile):
            _copy_local(plan, tmp, policy)
        else:
            _download(plan, tmp, policy, token, timeout)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _copy_local(plan: LocalFile, tmp: Path, policy: MediaPolicy) -> None:
    fd, _ = policy.open_local(plan.path)
    with os.fdopen(fd, "rb") as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)


def _download(plan: Remote, tmp: Path, policy: MediaPolicy, token: str | None, timeout: float) -> None:
    limit = policy.max_bytes
    with policy_session(policy) as session:
        for n, url in enumerate(plan.urls):
            try:
                response = _get_following_checked_redirects(session, url, policy, token, timeout)
            except requests.HTTPError:
                if n + 1 < len(plan.urls):
                    continue  # e.g. Label Studio's storage proxy refused an upload: try its older route
                raise
            with response:
                declared = int(response.headers.get("Content-Length") or 0)
                if limit is not None and declared > limit:
                    raise MediaError(_over_limit(url, limit, declared))
                written = 0
                with open(tmp, "wb") as out:
                    for chunk in response.iter_content(CHUNK):
                        written += len(chunk)
                        if limit is not None and written > limit:
                            raise MediaError(_over_limit(url, limit))
                        out.write(chunk)
            return


def _over_limit(url: str, limit: int, size: int | None = None) -> str:
    what = f"is {size / 2**20:.1f} MB" if size is not None else "is larger than that"
    return f"{redact_url(url)} {what}: over the {limit / 2**20:.0f} MB limit (DECAF_MAX_MEDIA_MB)"


def _get_following_checked_redirects(
    session: requests.Session, url: str, policy: MediaPolicy, token: str | None, timeout: float
) -> requests.Response:
    for _ in range(MAX_REDIRECTS + 1):
        policy.check_url(url)
        headers = _auth_header(token) if token and policy.sends_token(url) else {}
        try:
            response = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=False)
        except requests.ConnectionError as exc:
            refused = _find_refusal(exc)
            if refused is not None:
                raise MediaRefused(f"media URL {redact_url(url)} is not allowed: {refused}") from None
            raise
        if response.is_redirect:
            location = response.headers.get("Location", "")
            response.close()
            url = urljoin(url, location)  # checked at the top of the loop, like the first URL
            continue
        if not response.ok:
            response.close()
            response.raise_for_status()
        return response
    raise MediaError(f"{redact_url(url)}: more than {MAX_REDIRECTS} redirects")


def _find_refusal(exc: BaseException | None) -> _Refused | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _Refused):
            return exc
        reason = getattr(exc, "reason", None)
        exc = reason if isinstance(reason, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def describe_failure(url: str, exc: BaseException) -> str:
    """A per-task message for a failed fetch: the redacted URL and the reason, never a token or header."""
    short = redact_url(url)
    if isinstance(exc, requests.HTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        hint = " (check LABEL_STUDIO_API_KEY)" if status in (401, 403) else ""
        return f"cannot download {short}: HTTP {status}{hint}"
    if isinstance(exc, requests.Timeout):
        return f"cannot download {short}: no answer within the timeout (DECAF_DOWNLOAD_TIMEOUT_S)"
    if isinstance(exc, requests.RequestException):
        host = urlsplit(exc.request.url).netloc if getattr(exc, "request", None) is not None else ""
        return f"cannot reach the media server {host.rsplit('@', 1)[-1] or short} ({type(exc).__name__})"
    return f"cannot fetch {short}: {exc}"


__all__ = ["MediaRefused", "describe_failure", "fetch", "policy_session"]
