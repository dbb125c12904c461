"""Tests for the shipped sample files in etc/: complete, documented, correct defaults."""

import re
from pathlib import Path

import pytest

from iceserv.config import Locations, Service, load_settings, names_for, parse_confd

ROOT = Path(__file__).resolve().parents[2]
CONFD = {
    Service.DAEMON: ROOT / "etc/conf.d/iceccd",
    Service.SCHEDULER: ROOT / "etc/conf.d/icecc-scheduler",
}
TOML = ROOT / "etc/iceserv/iceserv.toml"
NONE = Locations(confd=(), toml=None, rc_conf=())


def _defaults(service):
    return load_settings(service, [], {}, locations=NONE).settings


@pytest.mark.parametrize("service", list(Service))
class TestConfdSamples:
    def test_everything_is_commented_out(self, service):
        """Like Gentoo's files, the samples set nothing: every assignment is commented out."""
        assert parse_confd(CONFD[service].read_text(), str(CONFD[service])).values == {}

    def test_every_variable_is_documented(self, service):
        """Each primary variable appears once, as a commented-out default with a comment above."""
        lines = CONFD[service].read_text().splitlines()
        names = names_for(service)
        for name in names.primary_names():
            hits = [i for i, line in enumerate(lines) if line.startswith(f"#{name}=")]
            assert len(hits) == 1, name
            assert lines[hits[0] - 1].startswith("# "), name

    def test_commented_defaults_are_the_real_defaults(self, service, tmp_path):
        """Uncommenting every setting changes nothing: the documented defaults are correct."""
        text = re.sub(r"(?m)^#(?=[A-Z_]+=)", "", CONFD[service].read_text())
        path = tmp_path / CONFD[service].name
        path.write_text(text)
        loaded = load_settings(service, ["--confd", str(path)], {}, locations=NONE)
        assert set(loaded.provenance) == set(names_for(service).fields)
        assert loaded.settings == _defaults(service)
        assert loaded.warnings == ()


class TestTomlSample:
    def test_is_valid_and_sets_nothing(self):
        """The sample TOML loads for both services and sets nothing."""
        for service in Service:
            loaded = load_settings(service, ["--config", str(TOML)], {}, locations=NONE)
            assert loaded.settings == _defaults(service)

    def test_uncommented_defaults_are_the_real_defaults(self, tmp_path):
        """Uncommenting every '# key = value' line gives the defaults, and covers every field."""
        text = re.sub(r"(?m)^# (?=[a-z_]+ = )", "", TOML.read_text())
        path = tmp_path / "iceserv.toml"
        path.write_text(text)
        for service in Service:
            loaded = load_settings(service, ["--config", str(path)], {}, locations=NONE)
            assert loaded.settings == _defaults(service)
            daemon_part, scheduler_part = text.split("[scheduler]")
            table = daemon_part if service is Service.DAEMON else scheduler_part
            shared = text.split("[cluster]")[1]  # both services read [cluster]
            examples = re.findall(r"(?m)^# Example: ([a-z_]+) = ", table + shared)
            set_here = {n for n, o in loaded.provenance.items() if o.kind.value == "toml"}
            assert set_here | set(examples) >= set(names_for(service).fields)
