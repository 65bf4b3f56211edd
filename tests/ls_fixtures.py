"""Session fixtures for tests that need a real Label Studio 1.23.2 server (marker `labelstudio`).

Register them once in tests/conftest.py with `from tests.ls_fixtures import label_studio_fixture  # noqa: F401`. The server
is started once per test process (tests/ls_server.shared_server) and stopped when the process exits.
"""

from __future__ import annotations

import os

import pytest

from tests.ls_server import LabelStudioServer, ls_executable, ls_venv, shared_server


@pytest.fixture(scope="session", name="label_studio")
def label_studio_fixture() -> LabelStudioServer:
    """A running Label Studio on 127.0.0.1 with an admin token; skips when its venv is missing."""
    require_label_studio()
    return shared_server()


def require_label_studio() -> None:
    """Skip (fail under DECAF_REQUIRE_LABEL_STUDIO) when Label Studio's venv holds no Label Studio."""
    if not ls_executable().exists():
        if os.environ.get("DECAF_REQUIRE_LABEL_STUDIO"):  # CI: a missing server must fail, not skip
            pytest.fail(f"Label Studio is not installed in {ls_venv()} and DECAF_REQUIRE_LABEL_STUDIO is set")
        pytest.skip(f"Label Studio is not installed in {ls_venv()} (run scripts/setup, or set LS_VENV)")
