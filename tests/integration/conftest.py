"""Fixtures the integration tests share: the pinned zstd sdist, its reference build, a tree;
a private system bus with our D-Bus policies."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from testbed import Project, Reference, reference_build, unpack_project
from testbed.dbusbed import SystemBus

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="module")
def zstd(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Fetch (or reuse) the sdist and build the reference once for the module."""
    return reference_build(tmp_path_factory.mktemp("zstd-reference"))


@pytest.fixture
def project(zstd: Reference, tmp_path: Path) -> Project:
    """A fresh copy of the project tree for this test."""
    return unpack_project(zstd.tarball, tmp_path / "zstd")


@pytest.fixture(scope="module")
def system_bus() -> Iterator[SystemBus]:
    """A private system bus with our D-Bus policies, for one module."""
    bus = SystemBus(user="daemon", group="staff").start()
    try:
        yield bus
    finally:
        bus.close()
