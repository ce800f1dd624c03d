"""Shared pytest options and fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import FIXTURES


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The minimal busybox root filesystem tarball of fixtures/busybox-rootfs.py."""
    if not os.access("/bin/busybox", os.X_OK):
        reason = "/bin/busybox not found: apt-get install busybox-static"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (required under CI=true)")
        pytest.skip(reason)
    path = tmp_path_factory.mktemp("rootfs") / "busybox-rootfs.tar"
    subprocess.run([sys.executable, str(FIXTURES / "busybox-rootfs.py"), str(path)], check=True, timeout=60)
    return path
