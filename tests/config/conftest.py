"""Helpers for the configuration tests: write files under tmp_path and load them."""

import pytest

from iceserv.config import Locations, Service, load_settings

DEFAULT_NAMES = {"daemon": "iceccd", "scheduler": "icecc-scheduler"}


class Loader:
    """Loads one service's settings from files written into a temporary directory."""

    def __init__(self, tmp_path):
        self.dir = tmp_path

    def write(self, name, text):
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def __call__(  # noqa: PLR0913 - one keyword per configuration layer
        self, service="daemon", argv=(), env=None, *, confd=None, toml=None, rc_conf=()
    ):
        """Load with *confd* and *toml* text as the standard-location files (None: absent)."""
        confd_paths = () if confd is None else (self.write(DEFAULT_NAMES[service], confd),)
        toml_path = None if toml is None else self.write("iceserv.toml", toml)
        locations = Locations(confd=confd_paths, toml=toml_path, rc_conf=tuple(rc_conf))
        return load_settings(Service(service), list(argv), env or {}, locations=locations)


@pytest.fixture
def load(tmp_path):
    return Loader(tmp_path)
