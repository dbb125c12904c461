"""Tests for iceserv.app.scheduler: settings to server settings, budgets fitted to the fd limit."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from iceserv.app.scheduler import fit_budgets, server_settings, telnet_policy
from iceserv.config import SchedulerSettings
from iceserv.netio import NofileLimit
from iceserv.protocol.auth import AuthMode
from iceserv.scheduler import SchedulerServerSettings
from iceserv.telnet import TelnetControl


class TestServerSettings:
    def test_budgets_and_deadlines_are_passed_on(self):
        """Every budget and deadline setting reaches the server's settings."""
        settings = SchedulerSettings(
            handshake_timeout=3, message_timeout=4, max_connections=100,
            max_connections_per_host=5, max_monitors=6, max_monitors_per_host=2,
        )  # fmt: skip
        server = server_settings(settings, {"ICECC_TESTS": "1"})
        assert (server.handshake_timeout, server.message_timeout) == (3, 4)
        assert (server.max_connections, server.max_connections_per_host) == (100, 5)
        assert (server.max_monitors, server.max_monitors_per_host) == (6, 2)

    @pytest.mark.parametrize(
        ("options", "addresses"),
        [
            ({}, ("",)),
            ({"interface": "lo"}, ("127.0.0.1", "::1")),
            ({"interface": "lo", "family": "ipv4"}, ("127.0.0.1",)),
            ({"interface": "lo", "family": "ipv6"}, ("::1",)),
        ],
    )
    def test_listen_addresses(self, options, addresses):
        """Every address by default; -i IFACE binds that interface's addresses of both families."""
        server = server_settings(SchedulerSettings(**options), {})
        assert server.addresses == addresses
        assert server.family == options.get("family", "any")

    def test_unknown_interface(self):
        """-i naming no interface is an OSError for main to report."""
        with pytest.raises(OSError, match="No such device"):
            server_settings(SchedulerSettings(interface="nosuchif0"), {})


class TestTelnetPolicy:
    @pytest.mark.parametrize(
        ("auth", "expected"),
        [
            (AuthMode.OFF, TelnetControl.ANY),
            (AuthMode.PREFER, TelnetControl.ANY),
            (AuthMode.REQUIRE, TelnetControl.LOCAL),
        ],
    )
    def test_auto_is_local_only_under_require(self, auth, expected):
        """auto keeps 1.4's telnet under off and prefer, and restricts it under require."""
        assert telnet_policy("auto", auth) is expected

    @pytest.mark.parametrize("mode", ["local", "off", "any"])
    def test_an_explicit_mode_wins_in_every_auth_mode(self, mode):
        """local, off and any apply whatever the authentication mode."""
        for auth in AuthMode:
            assert telnet_policy(mode, auth) is TelnetControl(mode)

    def test_monitors_reach_the_server(self):
        """The monitors setting is passed to the server as normalised networks."""
        settings = SchedulerSettings(monitors="10.0.0.0/8 ::1")
        assert server_settings(settings, {}).monitors == ("10.0.0.0/8", "::1/128")


class TestFitBudgets:
    def test_a_large_limit_changes_nothing(self):
        """With 65536 descriptors the defaults fit and nothing is logged."""
        with capture_logs() as logs:
            limit = NofileLimit(1024, 65536, 65536)
            server, telnet = fit_budgets(SchedulerServerSettings(), 64, limit)
        assert (server, telnet) == (SchedulerServerSettings(), 64)
        assert logs == []

    @pytest.mark.parametrize(
        ("soft", "connections", "telnet"), [(1024, 896, 64), (128, 64, 32), (8, 4, 2)]
    )
    def test_a_small_limit_lowers_the_budgets(self, soft, connections, telnet):
        """Telnet gets at most a quarter, a reserve stays free, the port gets the rest."""
        with capture_logs() as logs:
            limit = NofileLimit(soft, soft, soft)
            server, sessions = fit_budgets(SchedulerServerSettings(), 64, limit)
        assert (server.max_connections, sessions) == (connections, telnet)
        assert server.max_connections_per_host <= server.max_connections
        assert server.max_monitors <= server.max_connections
        assert [e["event"] for e in logs] == ["connection_budget_lowered"]
