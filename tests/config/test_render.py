"""Tests for iceserv.config.render: show and migrate output."""

import json
import tomllib

import pytest

from iceserv.config import (
    Service,
    render_json,
    render_migration,
    render_text,
    render_toml,
)


@pytest.fixture
def loaded(load):
    confd = 'ICECCD_MAX_PROCESSES=8\nICECCD_SCHEDULER_HOST="sched"\n'
    return {
        Service.DAEMON: load(confd=confd, env={"ICECCD_NICE_LEVEL": "2"}),
        Service.SCHEDULER: load("scheduler", argv=["-p", "9000"]),
    }


class TestRenderText:
    def test_one_line_per_setting_with_its_source(self, loaded, load):
        """Each service gets a header and one line per field: name, value, source."""
        lines = render_text(loaded).splitlines()
        assert lines[0] == "[daemon]"
        assert lines[35] == "[scheduler]"
        assert len(lines) == 2 + 34 + 25
        by_name = {line.split()[0]: line.split(None, 2)[1:] for line in lines[1:30]}
        assert by_name["max_processes"] == ["8", f"{load.dir / 'iceccd'}:1: ICECCD_MAX_PROCESSES"]
        assert by_name["nice_level"] == ["2", "env ICECCD_NICE_LEVEL"]
        assert by_name["scheduler_host"] == [
            '"sched:8765"',
            f"{load.dir / 'iceccd'}:2: ICECCD_SCHEDULER_HOST",
        ]
        log_file = next(line for line in lines if line.split()[0] == "log_file")
        assert log_file.split() == ["log_file", "(not", "set)", "default"]


class TestRenderToml:
    def test_valid_toml_with_sources_in_comments(self, loaded):
        """The TOML output parses, holds every set value and names each source."""
        text = render_toml(loaded)
        document = tomllib.loads(text)
        assert document["daemon"]["max_processes"] == 8
        assert document["daemon"]["scheduler_host"] == "sched:8765"
        assert "log_file" not in document["daemon"]
        assert document["scheduler"]["port"] == 9000
        assert "port = 9000  # flag -p" in text
        assert "# log_file is not set  # default" in text


class TestRenderJson:
    def test_value_and_source_per_setting(self, loaded):
        """JSON maps service -> setting -> {value, source}."""
        document = json.loads(render_json(loaded))
        assert document["daemon"]["nice_level"] == {"value": 2, "source": "env ICECCD_NICE_LEVEL"}
        assert document["scheduler"]["port"] == {"value": 9000, "source": "flag -p"}
        assert len(document["daemon"]) == 34


class TestRenderMigration:
    def test_only_confd_values(self, loaded):
        """Migration writes conf.d values only, under a comment header."""
        text = render_migration(loaded, "first line\n\nthird line")
        assert text.startswith("# first line\n#\n# third line\n")
        assert tomllib.loads(text) == {
            "daemon": {"max_processes": 8, "scheduler_host": "sched:8765"},
            "scheduler": {},
        }
