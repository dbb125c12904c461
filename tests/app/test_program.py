"""Tests of what iceccd and icecc-scheduler share: loading settings, the log, reload changes."""

from __future__ import annotations

import os

import pytest

from iceserv._version import VERSION
from iceserv.app.program import EXIT_USAGE, load_or_exit, open_log, reload_changes
from iceserv.config import Locations, Service, load_daemon_settings, load_scheduler_settings

NO_FILES = Locations(confd=(), toml=None, rc_conf=())


def _load(argv, environ):
    return load_scheduler_settings(argv, environ, locations=NO_FILES)


def _load_daemon(argv, environ):
    return load_daemon_settings(argv, environ, locations=NO_FILES)


class TestLoadOrExit:
    def test_help_prints_the_banner_and_usage(self, capsys):
        """--help prints 'ICECREAM <service> ...' and the usage and gives 1, as 1.4 does."""
        assert load_or_exit(Service.SCHEDULER, _load, ["-h"], {}, prog="icecc-scheduler") == (
            EXIT_USAGE
        )
        out = capsys.readouterr().out
        assert out.startswith("ICECREAM scheduler ")
        assert "usage: icecc-scheduler" in out

    @pytest.mark.parametrize(("service", "prog"), [(Service.SCHEDULER, "icecc-scheduler"),
                                                    (Service.DAEMON, "iceccd")])  # fmt: skip
    def test_version_prints_the_banner_and_gives_0(self, capsys, service, prog):
        """--version prints 'ICECREAM <service> <version> (iceserv)' alone and gives 0."""
        assert load_or_exit(service, _load, ["--version"], {}, prog=prog) == 0
        assert capsys.readouterr().out == f"ICECREAM {service} {VERSION} (iceserv)\n"

    def test_a_bad_flag_points_at_help(self, capsys):
        """An unknown flag is named, with a pointer to --help, and gives EX_CONFIG."""
        code = load_or_exit(Service.SCHEDULER, _load, ["--bogus"], {}, prog="icecc-scheduler")
        assert code == os.EX_CONFIG
        assert capsys.readouterr().err == (
            "icecc-scheduler: flag --bogus: not recognized\n"
            "icecc-scheduler: see 'icecc-scheduler --help' for the options\n"
        )

    def test_check_config_prints_the_warnings(self, capsys, tmp_path):
        """With --check-config the warnings go to stderr, as `iceserv config check` prints them."""
        confd = tmp_path / "iceccd"
        confd.write_text("ICECCD_MAX_JOBZ=3\n")
        args = ["--confd", str(confd), "--check-config"]
        loaded = load_or_exit(Service.DAEMON, _load_daemon, args, {}, prog="iceccd")
        assert not isinstance(loaded, int)
        assert capsys.readouterr().err == (
            f"iceccd: warning: {confd}:1: unknown variable ICECCD_MAX_JOBZ; "
            "did you mean ICECCD_MAX_PROCESSES?\n"
        )

    def test_configuration_error_is_one_line_per_problem(self, capsys):
        """A bad value gives EX_CONFIG and lines prefixed with the program name."""
        code = load_or_exit(Service.SCHEDULER, _load, ["-p", "x"], {}, prog="icecc-scheduler")
        assert code == os.EX_CONFIG
        assert capsys.readouterr().err.startswith("icecc-scheduler: ")

    def test_settings_are_returned(self):
        """Valid arguments give the loaded settings."""
        loaded = load_or_exit(Service.SCHEDULER, _load, ["-p", "9000"], {}, prog="x")
        assert not isinstance(loaded, int)
        assert loaded.settings.port == 9000


class TestOpenLog:
    def test_unopenable_log_file_exits_cantcreat(self, capsys, tmp_path):
        """A log file that cannot be opened gives EX_CANTCREAT and one line on stderr."""
        settings = _load(["-l", str(tmp_path / "missing" / "log")], {}).settings
        assert open_log(settings, None, prog="icecc-scheduler") == os.EX_CANTCREAT
        assert capsys.readouterr().err.startswith("icecc-scheduler: cannot open log file: ")


class TestReloadChanges:
    def test_restart_only_fields_keep_their_old_value(self):
        """Changed restart-only fields are reported and kept; the rest apply live."""
        old = _load(["-p", "9000", "-n", "a"], {}).settings
        new = _load(["-p", "9100", "-n", "b"], {}).settings
        applied, live, fixed = reload_changes(new, old, ("port",))
        assert (live, fixed) == (["net_name"], ["port"])
        assert (applied.port, applied.net_name) == (9000, "b")

    def test_nothing_changed(self):
        """Equal settings give no changes and the same values."""
        old = _load([], {}).settings
        assert reload_changes(old, old, ("port",)) == (old, [], [])
