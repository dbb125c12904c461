"""Fixtures for the compiler wrapper's tests (see ``bed.py`` and ``testbed.client_fakes``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
from client.bed import WrapperBed
from testbed.client_fakes import write_launcher

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="session")
def wrappers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with our ``icecc`` and ``icerun`` launchers (as pip would install them)."""
    bin_dir = tmp_path_factory.mktemp("ourbin")
    write_launcher(bin_dir / "icecc", sys.executable)
    write_launcher(bin_dir / "icerun", sys.executable)
    return bin_dir


@pytest.fixture
def bed(tmp_path: Path, wrappers: Path) -> WrapperBed:
    """A fresh ``WrapperBed``."""
    return WrapperBed(tmp_path, wrappers)
