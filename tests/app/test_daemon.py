"""Tests of the iceccd program's start-up decisions: exit codes, socket path, listeners."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from iceserv.app.daemon import fit_budgets, main, server_settings, socket_path
from iceserv.config import Locations, load_daemon_settings
from iceserv.netio import NofileLimit

NO_FILES = Locations(confd=(), toml=None, rc_conf=())


def _settings(*argv: str):
    return load_daemon_settings(list(argv), {}, locations=NO_FILES).settings


class TestMain:
    def test_help_exits_like_14(self, capsys):
        """-h prints the usage and exits 1, as 1.4's iceccd does."""
        assert main(["-h"], {}) == 1
        assert "--no-remote" in capsys.readouterr().out

    def test_configuration_error_exits_78(self, capsys):
        """A bad value is one line on stderr and EX_CONFIG."""
        assert main(["-m", "eight"], {}) == 78
        assert capsys.readouterr().err.startswith("iceccd: ")

    def test_check_config_prints_the_settings(self, capsys, tmp_path):
        """--check-config shows every setting with its source and starts nothing."""
        toml = tmp_path / "iceserv.toml"
        toml.write_text("[daemon]\nmax_processes = 3\n")
        assert main(["--check-config", "--config", str(toml), "-N", "box"], {}) == 0
        out = capsys.readouterr().out
        assert "max_processes" in out
        assert "box" in out


class TestSocketPath:
    def test_test_socket_wins(self):
        """ICECC_TEST_SOCKET is used whatever the privileges (reference §1.2)."""
        assert socket_path({"ICECC_TEST_SOCKET": "/x/s"}, privileged=True) == Path("/x/s")

    def test_privileged_and_user_paths(self):
        """Root (or CAP_SYS_CHROOT) uses /var/run/icecc; anyone else $HOME/.iceccd.socket."""
        assert socket_path({}, privileged=True) == Path("/var/run/icecc/iceccd.socket")
        assert socket_path({"HOME": "/home/u"}, privileged=False) == Path(
            "/home/u/.iceccd.socket"
        )


class TestServerSettings:
    def test_defaults_and_tests_mode(self):
        """All interfaces of both families on 10245; ICECC_TESTS: loopback broadcasts, 3 s."""
        server = server_settings(_settings("-N", "n1"), {"ICECC_TESTS": "1"},
                                 chroot_possible=True)  # fmt: skip
        assert (server.listen_addresses, server.port, server.family) == (("",), 10245, "any")
        assert server.broadcasts() == ("127.0.0.1",)
        assert server.fast_reconnect
        assert server.nodename == "n1"
        assert server.remote_allowed

    @pytest.mark.parametrize(("argv", "chroot"), [(("--no-remote",), True), ((), False)])
    def test_no_listener_without_remote_jobs(self, argv, chroot):
        """--no-remote, or no way to chroot, opens no TCP port and announces port 0."""
        server = server_settings(_settings(*argv), {}, chroot_possible=chroot)
        assert (server.listen_addresses, server.port) == ((), 0)
        assert not server.remote_allowed
        assert server.chroot_possible is chroot

    def test_scheduler_limits_and_child_environment(self):
        """-s, -m, --cache-limit map through; the manager's variables never reach compilers."""
        settings = _settings("-s", "10.0.0.2:9000", "-m", "0", "--cache-limit", "10")
        server = server_settings(settings, {"NOTIFY_SOCKET": "/run/x", "LANG": "C"},
                                 chroot_possible=True)  # fmt: skip
        assert server.scheduler == ("10.0.0.2", 9000)
        assert server.max_kids == 0
        assert server.cache_limit == 10 * 1024 * 1024
        assert server.child_environ == {"LANG": "C", "PATH": "/usr/bin"}

    def test_interface_adds_loopback(self):
        """-i binds that interface's addresses and 127.0.0.1 and ::1 (once, even for lo)."""
        server = server_settings(_settings("-i", "lo"), {}, chroot_possible=True)
        assert server.listen_addresses == ("127.0.0.1", "::1")

    @pytest.mark.parametrize(("family", "addresses"), [("ipv4", ("127.0.0.1",)),
                                                       ("ipv6", ("::1",))])  # fmt: skip
    def test_interface_of_one_family(self, family, addresses):
        """--family limits -i to that interface's addresses (and loopback) of one family."""
        server = server_settings(_settings("-i", "lo", "--family", family), {},
                                 chroot_possible=True)  # fmt: skip
        assert (server.listen_addresses, server.family) == (addresses, family)


class TestHostileLimits:
    def test_limits_are_passed_on_in_bytes(self):
        """Every budget, deadline and memory limit reaches the daemon's settings (MB -> bytes)."""
        settings = _settings(
            "--tcp-clients", "100", "--tcp-clients-per-host", "200", "--local-clients", "50",
            "--source-buffer-limit", "8", "--source-budget", "32", "--unpack-limit", "3",
            "--unpack-queue", "5", "--build-limit", "2", "--handshake-timeout", "4",
            "--message-timeout", "6",
        )  # fmt: skip
        server = server_settings(settings, {}, chroot_possible=True)
        assert (server.max_clients, server.max_clients_per_host) == (100, 100)
        assert server.max_local_clients == 50
        assert (server.source_buffer_limit, server.source_budget) == (8 << 20, 32 << 20)
        assert (server.max_env_transfers, server.env_transfer_queue) == (3, 5)
        assert server.max_native_builds == 2
        assert (server.handshake_timeout, server.message_timeout) == (4, 6)

    def test_a_large_descriptor_limit_changes_nothing(self):
        """With 65536 descriptors the default budgets fit and nothing is logged."""
        server = server_settings(_settings(), {}, chroot_possible=True)
        with capture_logs() as logs:
            fitted = fit_budgets(server, NofileLimit(1024, 65536, 65536))
        assert fitted == server
        assert logs == []

    def test_a_small_limit_lowers_the_budgets(self):
        """The Unix socket gets at most a quarter, jobs and a reserve stay free, TCP the rest."""
        server = server_settings(_settings("-m", "4"), {}, chroot_possible=True)
        with capture_logs() as logs:
            fitted = fit_budgets(server, NofileLimit(1024, 1024, 1024))
        assert fitted.max_local_clients == 256
        assert fitted.max_clients + fitted.max_local_clients + 8 * (4 + 2 + 1) < 1024
        assert fitted.max_clients_per_host <= fitted.max_clients
        assert [e["event"] for e in logs] == ["connection_budget_lowered"]

    def test_the_http_endpoint_takes_its_share(self):
        """With --http the endpoint's connections are kept out of the TCP budget."""
        server = server_settings(_settings("-m", "4"), {}, chroot_possible=True)
        limit = NofileLimit(1536, 1536, 1536)
        without = fit_budgets(server, limit)
        with_http = fit_budgets(server, limit, http=True)
        assert with_http.max_clients < without.max_clients
        jobs = 8 * (4 + 2 + 1)
        assert with_http.max_clients + with_http.max_local_clients + jobs + 260 < limit.soft
class TestHttpIsLazy:
    def test_the_daemon_loads_no_http_stack_without_http(self):
        """aiohttp and prometheus_client are imported only when ``http`` is set (1 s, 11 MiB)."""
        code = (
            "import sys, iceserv.app.daemon\n"
            "print(sorted(m for m in ('aiohttp', 'prometheus_client', 'iceserv.web')"
            " if m in sys.modules))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True, timeout=120)  # fmt: skip
        assert result.stdout.strip() == "[]"
