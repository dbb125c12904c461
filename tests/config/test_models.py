"""Tests for iceserv.config.models: field types, defaults and validation."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from iceserv.config.models import DaemonSettings, HostPort, SchedulerSettings

# The cross-walk's rows (services.md §1.8), with iceserv's defaults.
DAEMON_DEFAULTS = {
    "nice_level": 5,
    "host_name": "",
    "net_name": "",
    "scheduler_host": None,
    "max_processes": None,
    "allow_remote": True,
    "env_basedir": Path("/var/cache/icecream"),
    "cache_limit": 256,
    "verbosity": 0,
    "log_file": None,
    "log_format": "auto",
    "stop_grace": 60.0,
    "user": "icecream",
    "interface": "",
    "port": 10245,
    "family": "any",
    "daemonize": False,
    "handshake_timeout": 15.0,
    "message_timeout": 30.0,
    "max_clients": 1024,
    "max_clients_per_host": 64,
    "max_local_clients": 1024,
    "source_buffer_limit": 16,
    "source_budget": 64,
    "max_env_transfers": 2,
    "env_transfer_queue": 16,
    "max_native_builds": 1,
    "native_compilers": "gcc clang",
    "push_ahead": True,
    "key_file": None,
    "previous_key_file": None,
    "auth": "off",
    "encrypt": False,
    "http": None,
}
SCHEDULER_DEFAULTS = {
    "net_name": "",
    "persistent_client_connection": False,
    "verbosity": 0,
    "interface": "",
    "log_file": None,
    "log_format": "auto",
    "port": 8765,
    "family": "any",
    "user": "",
    "daemonize": False,
    "handshake_timeout": 15.0,
    "message_timeout": 30.0,
    "max_connections": 16384,
    "max_connections_per_host": 64,
    "max_monitors": 256,
    "max_monitors_per_host": 16,
    "max_telnet_sessions": 64,
    "max_telnet_sessions_per_host": 16,
    "key_file": None,
    "previous_key_file": None,
    "auth": "off",
    "encrypt": False,
    "telnet_control": "auto",
    "monitors": (),
    "http": None,
}


def _reason(cls, **values):
    with pytest.raises(ValidationError) as info:
        cls.model_validate(values)
    (error,) = info.value.errors(include_url=False)
    return error["msg"]


class TestDaemonSettings:
    def test_defaults(self):
        """Every cross-walk field exists with the documented default."""
        assert DaemonSettings().model_dump() == DAEMON_DEFAULTS

    def test_frozen(self):
        """Settings cannot be changed after loading."""
        with pytest.raises(ValidationError, match="frozen"):
            DaemonSettings().port = 1  # type: ignore[misc]

    def test_unknown_field(self):
        """An unknown setting is rejected, not ignored."""
        assert _reason(DaemonSettings, max_procesess=3) == "Extra inputs are not permitted"

    def test_environment_is_not_read(self, monkeypatch):
        """The model has no implicit sources: ICECCD_PORT in os.environ changes nothing."""
        monkeypatch.setenv("ICECCD_PORT", "1")
        monkeypatch.setenv("PORT", "1")
        assert DaemonSettings().port == 10245

    @pytest.mark.parametrize(
        ("field", "raw", "expected"),
        [
            ("nice_level", "19", 19),
            ("nice_level", "-20", -20),
            ("host_name", "node-1.lab", "node-1.lab"),
            ("net_name", "lab", "lab"),
            ("scheduler_host", "sched", HostPort("sched", 8765)),
            ("scheduler_host", "10.0.0.2:9000", HostPort("10.0.0.2", 9000)),
            ("scheduler_host", "", None),
            ("max_processes", "8", 8),
            ("max_processes", "0", 0),
            ("max_processes", "", None),
            ("allow_remote", "no", False),
            ("allow_remote", "YES", True),
            ("allow_remote", "off", False),
            ("env_basedir", "/srv/envs", Path("/srv/envs")),
            ("cache_limit", "1024", 1024),
            ("verbosity", "vv", 2),
            ("verbosity", "-vvv", 3),
            ("verbosity", "1", 1),
            ("verbosity", 3, 3),
            ("log_file", "/var/log/icecream/iceccd.log", Path("/var/log/icecream/iceccd.log")),
            ("log_file", "", None),
            ("user", "icecc", "icecc"),
            ("interface", "eth0", "eth0"),
            ("port", "10246", 10246),
            ("daemonize", "yes", True),
        ],
    )
    def test_valid_values(self, field, raw, expected):
        """Strings as found in conf.d files are converted to the field's type."""
        assert getattr(DaemonSettings.model_validate({field: raw}), field) == expected

    @pytest.mark.parametrize(
        ("field", "raw", "reason"),
        [
            ("nice_level", "40", "Input should be less than or equal to 19"),
            ("nice_level", "-21", "Input should be greater than or equal to -20"),
            ("host_name", "two words", "Value error, must not contain blanks"),
            ("net_name", "a\tb", "Value error, must not contain blanks"),
            ("scheduler_host", "a b", "Value error, 'a b' is not a host name"),
            ("scheduler_host", "h:0", "Value error, port 0 is not between 1 and 65535"),
            ("scheduler_host", "h:99999", "Value error, port 99999 is not between"),
            ("scheduler_host", "h:x", "Value error, expected HOST or HOST:PORT"),
            ("scheduler_host", "[zz]:1", "Value error, 'zz' is not an IPv6 address"),
            ("scheduler_host", 5, "Value error, expected a string HOST or HOST:PORT"),
            ("max_processes", "eight", "Input should be a valid integer, unable to parse"),
            ("max_processes", "-1", "Input should be greater than or equal to 0"),
            ("allow_remote", "maybe", "Input should be a valid boolean, unable to interpret"),
            ("env_basedir", "'/var/cache/icecream'", "Value error, must be an absolute path"),
            ("cache_limit", "-5", "Input should be greater than or equal to 0"),
            ("verbosity", "vvvv", "Input should be less than or equal to 3"),
            ("verbosity", "verbose", "Value error, expected 'v', 'vv' or 'vvv'"),
            ("log_file", "iceccd.log", "Value error, must be an absolute path"),
            ("user", "", "String should have at least 1 character"),
            ("interface", "a-very-long-interface", "Value error, not a network interface name"),
            ("interface", "eth0:1", "Value error, not a network interface name"),
            ("port", "0", "Input should be greater than or equal to 1"),
            ("port", "65536", "Input should be less than or equal to 65535"),
            ("daemonize", "sometimes", "Input should be a valid boolean"),
        ],
    )
    def test_invalid_values(self, field, raw, reason):
        """Each invalid value is rejected with a reason naming the constraint."""
        assert _reason(DaemonSettings, **{field: raw}).startswith(reason)

    def test_every_field_is_documented(self):
        """Every field carries a description (its attribute docstring) naming its flag."""
        for name, info in DaemonSettings.model_fields.items():
            assert info.description, name
            assert "(" in info.description, name


class TestSchedulerSettings:
    def test_defaults(self):
        """Every cross-walk field exists with the documented default."""
        assert SchedulerSettings().model_dump() == SCHEDULER_DEFAULTS

    def test_monitors_are_normalised_networks_of_both_families(self):
        """A string splits on blanks and commas; host bits are cleared; duplicates go."""
        settings = SchedulerSettings(monitors="10.1.2.3/8, ::1 10.0.0.0/8,fd00::5/64")
        assert settings.monitors == ("10.0.0.0/8", "::1/128", "fd00::/64")
        assert SchedulerSettings(monitors=["192.0.2.7"]).monitors == ("192.0.2.7/32",)

    @pytest.mark.parametrize("bad", ["bogus", "10.0.0.0/33", "example.org"])
    def test_a_bad_monitor_network_is_refused(self, bad):
        """Each entry must be an address or CIDR network."""
        assert "neither an IP address nor a CIDR network" in _reason(
            SchedulerSettings, monitors=bad
        )

    @pytest.mark.parametrize("mode", ["auto", "local", "off", "any"])
    def test_telnet_control_modes(self, mode):
        """telnet_control takes the four modes and nothing else."""
        assert SchedulerSettings(telnet_control=mode).telnet_control == mode
        with pytest.raises(ValidationError):
            SchedulerSettings(telnet_control="nobody")

    def test_text_port_is_port_plus_one(self):
        """The telnet port is always the scheduler port + 1, as in 1.4."""
        assert SchedulerSettings().text_port == 8766
        assert SchedulerSettings.model_validate({"port": "9000"}).text_port == 9001

    def test_port_leaves_room_for_the_text_port(self):
        """Port 65535 is rejected because the telnet port would not exist."""
        assert (
            _reason(SchedulerSettings, port=65535) == "Input should be less than or equal to 65534"
        )

    @pytest.mark.parametrize(
        ("field", "raw", "expected"),
        [
            ("net_name", "lab", "lab"),
            ("persistent_client_connection", "yes", True),
            ("verbosity", "v", 1),
            ("interface", "eth0", "eth0"),
            ("log_file", "/var/log/sched.log", Path("/var/log/sched.log")),
            ("port", "8888", 8888),
            ("user", "icecream", "icecream"),
            ("daemonize", "1", True),
        ],
    )
    def test_valid_values(self, field, raw, expected):
        """Strings as found in conf.d files are converted to the field's type."""
        assert getattr(SchedulerSettings.model_validate({field: raw}), field) == expected

    def test_unknown_field(self):
        """Daemon-only settings are not scheduler settings."""
        assert _reason(SchedulerSettings, max_processes=3) == "Extra inputs are not permitted"


class TestEncrypt:
    """``encrypt`` (issue 14 item 4) needs authentication: its keys come from the handshake."""

    @pytest.mark.parametrize("model", [DaemonSettings, SchedulerSettings])
    def test_encrypt_needs_auth(self, model):
        """encrypt = yes with auth off is refused with the reason."""
        with pytest.raises(ValidationError, match="encrypt = yes needs auth = prefer or require"):
            model(encrypt=True)

    @pytest.mark.parametrize("model", [DaemonSettings, SchedulerSettings])
    def test_encrypt_with_a_key_and_auth(self, model):
        """With a key file and prefer or require, encrypt is accepted."""
        settings = model(encrypt=True, auth="require", key_file=Path("/etc/iceserv/key"))
        assert settings.encrypt is True


class TestHostPort:
    @pytest.mark.parametrize(
        ("text", "expected", "shown"),
        [
            ("sched", HostPort("sched"), "sched:8765"),
            (
                "sched.example.org:8766",
                HostPort("sched.example.org", 8766),
                "sched.example.org:8766",
            ),
            ("192.168.1.2", HostPort("192.168.1.2"), "192.168.1.2:8765"),
            ("[::1]:9000", HostPort("::1", 9000), "[::1]:9000"),
            ("fe80::1", HostPort("fe80::1"), "[fe80::1]:8765"),
            (" padded ", HostPort("padded"), "padded:8765"),
        ],
    )
    def test_forms(self, text, expected, shown):
        """HOST, HOST:PORT, [IPv6]:PORT and bare IPv6 are accepted and shown as host:port."""
        settings = DaemonSettings.model_validate({"scheduler_host": text})
        assert settings.scheduler_host == expected
        assert settings.model_dump(mode="json")["scheduler_host"] == shown

    def test_round_trip(self):
        """The shown form reads back to the same address."""
        first = DaemonSettings.model_validate({"scheduler_host": "[::1]:9000"})
        shown = first.model_dump(mode="json")["scheduler_host"]
        assert DaemonSettings.model_validate({"scheduler_host": shown}) == first
