"""Tests of iceserv.sim.cluster: hosts and network descriptions."""

from __future__ import annotations

import json

import pytest

from iceserv.sim.cluster import ClusterSpec, HostSpec, parse_cluster, parse_host, read_cluster
from iceserv.sim.trace import SimInputError


class TestParseHost:
    def test_compact_form(self):
        """NAME:SPEED:SLOTS[@JOIN] gives a host."""
        assert parse_host("fast:2:8") == HostSpec("fast", 2.0, 8)
        assert parse_host("late:1.5:4@60") == HostSpec("late", 1.5, 4, join=60.0)

    @pytest.mark.parametrize("spec", ["fast", "fast:2", "fast:x:8", "fast:2:8:1", "f:0:4",
                                      "f:1:-1", ":1:1", "f:1:1@-5"])  # fmt: skip
    def test_bad_forms(self, spec):
        """Malformed or impossible hosts are input errors."""
        with pytest.raises(SimInputError):
            parse_host(spec)


class TestParseCluster:
    def test_file(self, tmp_path):
        """A JSON file gives hosts in order and the network figures."""
        path = tmp_path / "c.json"
        path.write_text(json.dumps({
            "comment": "x",
            "hosts": [{"name": "a", "speed": 2, "slots": 8, "envs": ["gcc"]},
                      {"name": "b", "join": 5, "load": 100}],
            "bandwidth": 1e6, "env_size": 1000, "install_seconds": 1,
        }))  # fmt: skip
        cluster = read_cluster(path)
        assert cluster.hosts == (HostSpec("a", 2.0, 8, envs=("gcc",)),
                                 HostSpec("b", join=5.0, load=100))  # fmt: skip
        assert (cluster.bandwidth, cluster.env_size, cluster.install_seconds) == (1e6, 1000, 1.0)
        assert cluster.host("b") is cluster.hosts[1]
        assert cluster.host("c") is None

    @pytest.mark.parametrize(
        "text",
        ["[]", "{}", '{"hosts": []}', '{"hosts": [{"speed": 1}]}',
         '{"hosts": [{"name": "a", "colour": 1}]}', '{"hosts": [{"name": "a"}], "x": 1}',
         '{"hosts": [{"name": "a"}, {"name": "a"}]}', '{"hosts": [{"name": "a", "load": 1000}]}',
         '{"hosts": [{"name": "a"}], "bandwidth": 0}', "not json"],
    )  # fmt: skip
    def test_bad_files(self, text):
        """Anything but a sound description is an input error naming the source."""
        with pytest.raises(SimInputError, match=r"^c\.json"):
            parse_cluster(text, "c.json")

    def test_defaults(self):
        """Without network figures: gigabit Ethernet, a 60 MB environment, 2 s to unpack it."""
        cluster = ClusterSpec((HostSpec("a"),))
        assert (cluster.bandwidth, cluster.env_size, cluster.install_seconds) == (125e6, 60e6, 2.0)
