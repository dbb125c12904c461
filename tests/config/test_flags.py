"""Tests for iceserv.config.flags: the icecream 1.4 command lines of iceccd and icecc-scheduler."""

import pytest

from iceserv.config import Service, parse_command_line, usage
from iceserv.config.flags import _OPTIONS, _TAKES_ARGUMENT
from iceserv.errors import ConfigError

# (short, long, field, argument, expected value) per upstream daemon/main.cpp and
# scheduler/scheduler.cpp (services.md §1.6).
DAEMON_FLAGS = [
    ("-N", "--name", "host_name", "node7", "node7"),
    ("-n", "--netname", "net_name", "lab", "lab"),
    ("-m", "--max-processes", "max_processes", "4", "4"),
    ("-l", "--log-file", "log_file", "/var/log/x.log", "/var/log/x.log"),
    ("-s", "--scheduler-host", "scheduler_host", "sched:8765", "sched:8765"),
    ("-b", "--env-basedir", "env_basedir", "/srv/envs", "/srv/envs"),
    ("-u", "--user-uid", "user", "icecc", "icecc"),
    ("-i", "--interface", "interface", "eth0", "eth0"),
    ("-p", "--port", "port", "10246", "10246"),
    (None, "--nice", "nice_level", "10", "10"),
    (None, "--cache-limit", "cache_limit", "512", "512"),
    (None, "--no-remote", "allow_remote", None, False),
    (None, "--no-push-ahead", "push_ahead", None, False),
    ("-d", "--daemonize", "daemonize", None, True),
]
SCHEDULER_FLAGS = [
    ("-n", "--netname", "net_name", "lab", "lab"),
    ("-i", "--interface", "interface", "eth0", "eth0"),
    ("-p", "--port", "port", "8766", "8766"),
    ("-l", "--log-file", "log_file", "/var/log/s.log", "/var/log/s.log"),
    ("-u", "--user-uid", "user", "icecream", "icecream"),
    ("-d", "--daemonize", "daemonize", None, True),
    ("-r", "--persistent-client-connection", "persistent_client_connection", None, True),
]


def _cases(service, table):
    for short, long, field, argument, expected in table:
        for flag in filter(None, (short, long)):
            argv = [flag] if argument is None else [flag, argument]
            yield pytest.param(service, argv, field, expected, flag, id=" ".join(argv))


def _error(service, argv):
    with pytest.raises(ConfigError) as info:
        parse_command_line(service, argv)
    return str(info.value)


class TestParseCommandLine:
    @pytest.mark.parametrize(
        ("service", "argv", "field", "expected", "flag"),
        [*_cases(Service.DAEMON, DAEMON_FLAGS), *_cases(Service.SCHEDULER, SCHEDULER_FLAGS)],
    )
    def test_every_flag(self, service, argv, field, expected, flag):
        """Each 1.4 flag, short and long, sets its field and records the flag used."""
        values = parse_command_line(service, argv).values
        assert set(values) == {field}
        assert (values[field].value, values[field].flag) == (expected, flag)

    def test_getopt_strings_match_1_4(self):
        """The short options are exactly 1.4's getopt strings (plus nothing of ours)."""
        for service, upstream in (
            (Service.DAEMON, "N:n:m:l:s:hvdb:u:i:p:"),
            (Service.SCHEDULER, "n:i:p:hl:vdru:"),
        ):
            ours = {
                o.short + (":" if o.action in _TAKES_ARGUMENT else "")
                for o in _OPTIONS[service]
                if o.short
            }
            theirs = {
                c + ":" if upstream[i + 1 : i + 2] == ":" else c
                for i, c in enumerate(upstream)
                if c != ":"
            }
            assert ours == theirs

    @pytest.mark.parametrize(
        ("argv", "verbosity", "flag"),
        [
            (["-v"], 1, "-v"),
            (["-vv"], 2, "-vv"),
            (["-vvv"], 3, "-vvv"),
            (["-v", "-v"], 2, "-vv"),
            (["-vvvv"], 3, "-vvvv"),
        ],
    )
    def test_verbosity_counts(self, argv, verbosity, flag):
        """Repeated -v counts up to 3; more is accepted and means 3, as in 1.4."""
        value = parse_command_line(Service.DAEMON, argv).values["verbosity"]
        assert (value.value, value.flag) == (verbosity, flag)

    @pytest.mark.parametrize(
        ("argv", "expected"),
        [
            (["-m4"], {"max_processes": "4"}),
            (["--port=1"], {"port": "1"}),
            (["-dvm", "2"], {"daemonize": True, "verbosity": 1, "max_processes": "2"}),
            (["--max", "3"], {"max_processes": "3"}),
            (["--netn", "lab"], {"net_name": "lab"}),
            (["-m", "1", "-m", "2"], {"max_processes": "2"}),
            (["-m", "-1"], {"max_processes": "-1"}),
        ],
    )
    def test_getopt_long_forms(self, argv, expected):
        """Attached arguments, bundles, unique prefixes and repeats work as with getopt_long."""
        values = parse_command_line(Service.DAEMON, argv).values
        assert {name: v.value for name, v in values.items()} == expected

    @pytest.mark.parametrize("argv", [["-d", "--foreground"], ["--foreground", "-d"]])
    def test_foreground_beats_daemonize(self, argv):
        """--foreground wins over -d in either order."""
        value = parse_command_line(Service.DAEMON, argv).values["daemonize"]
        assert (value.value, value.flag) == (False, "--foreground")

    def test_iceserv_options(self):
        """--confd (repeatable), --config, --help and --check-config are recorded."""
        cmd = parse_command_line(
            Service.SCHEDULER,
            ["--confd", "/a", "--confd=/b", "--config", "/c.toml", "-h", "--check-config"],
        )
        assert [str(p) for p in cmd.confd_paths] == ["/a", "/b"]
        assert str(cmd.config_path) == "/c.toml"
        assert (cmd.help, cmd.check_config, dict(cmd.values)) == (True, True, {})

    def test_no_arguments(self):
        """An empty command line sets nothing."""
        cmd = parse_command_line(Service.DAEMON, [])
        assert (dict(cmd.values), cmd.confd_paths, cmd.config_path, cmd.help) == (
            {},
            (),
            None,
            False,
        )

    @pytest.mark.parametrize(
        ("service", "argv", "message"),
        [
            (Service.DAEMON, ["--net-name", "x"], "flag --net-name: not recognized"),
            (Service.SCHEDULER, ["--net-name", "x"], "flag --net-name: not recognized"),
            (Service.DAEMON, ["-x"], "flag -x: not recognized"),
            (Service.DAEMON, ["-m"], "flag -m: requires argument"),
            (Service.DAEMON, ["--port"], "flag --port: requires argument"),
            (Service.DAEMON, ["--no-remote=yes"], "flag --no-remote: must not have an argument"),
            (Service.DAEMON, ["--n", "x"], "flag --n: not a unique prefix"),
            (Service.DAEMON, ["-r"], "flag -r: not recognized"),
            (Service.SCHEDULER, ["-m", "4"], "flag -m: not recognized"),
            (Service.SCHEDULER, ["--no-remote"], "flag --no-remote: not recognized"),
            (
                Service.DAEMON,
                ["stray"],
                "flag stray: unexpected argument (iceccd takes only options)",
            ),
            (Service.DAEMON, ["--confd", ""], "flag --confd: needs a file name"),
        ],
    )
    def test_errors(self, service, argv, message):
        """Bad command lines give one 'flag --x: reason' line (1.4 rejects --net-name too)."""
        assert _error(service, argv) == message


class TestUsage:
    @pytest.mark.parametrize("service", list(Service))
    def test_lists_every_option(self, service):
        """The help text names every short and long option."""
        text = usage(service)
        for option in _OPTIONS[service]:
            if option.short:
                assert f"-{option.short}" in text
            if option.long:
                assert f"--{option.long}" in text
