"""The name of a daemon's iceserv-only endpoint (abstract Unix socket)."""

from __future__ import annotations

from iceserv.protocol.endpoint import ENDPOINT_PREFIX, iceserv_endpoint, tcp_address


class TestEndpointName:
    def test_names_are_abstract_short_and_distinct(self):
        """Abstract (leading NUL), within sun_path, different per daemon address."""
        names = {iceserv_endpoint(a) for a in ("/a/s", "/b/s", tcp_address(10245), "tcp:10246")}
        assert len(names) == 4
        assert all(n.startswith("\0") and len(n.encode()) < 108 for n in names)

    def test_relative_and_absolute_paths_agree(self, tmp_path, monkeypatch):
        """A relative socket path names the same endpoint as its absolute spelling."""
        monkeypatch.chdir(tmp_path)
        assert iceserv_endpoint("d.sock") == iceserv_endpoint(str(tmp_path / "d.sock"))

    def test_known_value(self):
        """The digest is FNV-1a 64 of the absolute path (pinned: clients compute it alone)."""
        assert iceserv_endpoint("/a") == "\0" + ENDPOINT_PREFIX + "07d66707b49cd92d"
