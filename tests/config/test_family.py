"""The ``family`` setting (any|ipv4|ipv6) in every layer, and ``-s`` with IPv6 literals."""

from __future__ import annotations

import pytest

from iceserv.config import HostPort
from iceserv.errors import ConfigError

NOT_A_FAMILY = "Input should be 'any', 'ipv4' or 'ipv6'"


def _error_lines(load, *args, **kwargs):
    with pytest.raises(ConfigError) as info:
        load(*args, **kwargs)
    return list(info.value.details)


class TestFamily:
    @pytest.mark.parametrize("service", ["daemon", "scheduler"])
    def test_default_is_any(self, load, service):
        """Both stacks unless restricted."""
        assert load(service).settings.family == "any"

    def test_network_table_applies_to_both_services(self, load):
        """[network] family sets both services, with its own provenance."""
        toml = "[network]\nfamily = 'ipv6'\n"
        for service in ("daemon", "scheduler"):
            loaded = load(service, toml=toml)
            assert loaded.settings.family == "ipv6"
            assert str(loaded.provenance["family"]).endswith("iceserv.toml:2: [network] family")

    def test_service_table_beats_network_table(self, load):
        """A service's own table overrides [network]."""
        toml = "[network]\nfamily = 'ipv6'\n[scheduler]\nfamily = 'any'\n"
        assert load("scheduler", toml=toml).settings.family == "any"
        assert load("daemon", toml=toml).settings.family == "ipv6"

    def test_flag_and_confd(self, load):
        """--family beats ICECCD_FAMILY in conf.d."""
        assert load(confd="ICECCD_FAMILY=ipv4\n").settings.family == "ipv4"
        loaded = load(argv=["--family", "ipv6"], confd="ICECCD_FAMILY=ipv4\n")
        assert loaded.settings.family == "ipv6"

    def test_bad_values_name_where_they_were_written(self, load):
        """A bad family is a path:line / flag error, never a silent default."""
        assert _error_lines(load, confd="ICECCD_FAMILY=inet6\n") == [
            f"{load.dir / 'iceccd'}:1: ICECCD_FAMILY='inet6': {NOT_A_FAMILY}"
        ]
        assert _error_lines(load, "scheduler", argv=["--family", "v6"]) == [
            f"flag --family='v6': {NOT_A_FAMILY}"
        ]
        assert _error_lines(load, toml="[network]\nfamily = 6\n") == [
            f"{load.dir / 'iceserv.toml'}:2: [network] family=6: {NOT_A_FAMILY}"
        ]

    def test_unknown_network_key(self, load):
        """[network] holds only shared settings: anything else is refused with its line."""
        assert _error_lines(load, toml="[network]\n\nport = 1\n") == [
            f"{load.dir / 'iceserv.toml'}:3: unknown setting 'port' in [network]; expected family"
        ]


class TestSchedulerHost:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[::1]:18965", HostPort("::1", 18965)),
            ("[fd00::1]", HostPort("fd00::1", 8765)),
            ("fd00::1", HostPort("fd00::1", 8765)),
            ("sched.lab:9000", HostPort("sched.lab", 9000)),
        ],
    )
    def test_ipv6_literals(self, load, text, expected):
        """-s takes [v6]:port, [v6] and a bare v6 literal, and prints [v6]:port."""
        host = load(argv=["-s", text]).settings.scheduler_host
        assert host == expected
        assert str(host) == (f"[{expected.host}]:{expected.port}" if ":" in expected.host
                             else f"{expected.host}:{expected.port}")  # fmt: skip

    @pytest.mark.parametrize("text", ["[::1", "[fd00::zz]:1", "::1]:5", "[::1]:99999", "[]:1"])
    def test_malformed_is_refused(self, load, text):
        """A malformed address is a flag error at load (config check), never a connect loop."""
        (line,) = _error_lines(load, argv=["-s", text])
        assert line.startswith(f"flag -s={text!r}: ")

    def test_malformed_in_confd_and_toml_names_the_line(self, load):
        """conf.d and TOML give path:line for a malformed IPv6 scheduler address."""
        (line,) = _error_lines(load, confd="\nICECCD_SCHEDULER_HOST='[fd00::1'\n")
        assert line.startswith(f"{load.dir / 'iceccd'}:2: ICECCD_SCHEDULER_HOST='[fd00::1': ")
        (line,) = _error_lines(load, toml="[daemon]\nscheduler_host = '[::1]:0'\n")
        assert line.startswith(f"{load.dir / 'iceserv.toml'}:2: [daemon] scheduler_host=")
        assert line.endswith("port 0 is not between 1 and 65535")

    def test_check_config_accepts_the_issue_example(self, tmp_path):
        """iceccd --check-config -s '[::1]:18965' passes (it now also connects)."""
        from iceserv.app.daemon import main  # noqa: PLC0415 - the program's entry point

        confd, toml = tmp_path / "iceccd", tmp_path / "iceserv.toml"
        confd.write_text("")
        toml.write_text("")
        argv = ["--check-config", "-s", "[::1]:18965", "--confd", str(confd), "--config", str(toml)]
        assert main(argv, {}) == 0
        assert main([*argv[:2], "[::1", *argv[3:]], {}) != 0
