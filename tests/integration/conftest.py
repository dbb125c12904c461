"""Fixtures the end-to-end build tests share: the pinned zstd sdist, its reference build, a tree."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from testbed import Project, Reference, reference_build, unpack_project

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def zstd(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Fetch (or reuse) the sdist and build the reference once for the module."""
    return reference_build(tmp_path_factory.mktemp("zstd-reference"))


@pytest.fixture
def project(zstd: Reference, tmp_path: Path) -> Project:
    """A fresh copy of the project tree for this test."""
    return unpack_project(zstd.tarball, tmp_path / "zstd")
