"""What the tests share: the repository, its fixtures, ../shared beside the checkout, external tools."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
SHARED = (REPO / ".." / "shared").resolve()


def shared_path(*parts: str) -> Path:
    """A path in ../shared; skip when it is absent, but fail under CI=true."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} not found: the shared conformance data lives beside the checkout"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (required under CI=true)")
        pytest.skip(reason)
    return path


def external_tool(name: str, package: str | None = None) -> str:
    """The path of the program `name` (Debian package `package`, default the same name); skip the
    test without it, but fail under CI=true, where .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian: apt-get install {package or name})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; required under CI=true")
        pytest.skip(reason)
    return path
