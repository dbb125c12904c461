"""Tests for iceserv.config.sources: names, layers, precedence, provenance and errors."""

import subprocess
import sys
from pathlib import Path

import pytest
from config.conftest import DEFAULT_NAMES

from iceserv.config import (
    HostPort,
    Locations,
    OriginKind,
    Service,
    load_daemon_settings,
    load_scheduler_settings,
    names_for,
)
from iceserv.errors import ConfigError

# field -> (text as in conf.d or the environment, expected value, TOML value)
DAEMON_SAMPLES = {
    "nice_level": ("10", 10, 10),
    "host_name": ("node7", "node7", "node7"),
    "net_name": ("lab", "lab", "lab"),
    "scheduler_host": ("sched:9000", HostPort("sched", 9000), "sched:9000"),
    "max_processes": ("4", 4, 4),
    "allow_remote": ("no", False, False),
    "env_basedir": ("/srv/envs", Path("/srv/envs"), "/srv/envs"),
    "cache_limit": ("512", 512, 512),
    "verbosity": ("vv", 2, 2),
    "log_file": ("/var/log/i.log", Path("/var/log/i.log"), "/var/log/i.log"),
    "user": ("icecc", "icecc", "icecc"),
    "interface": ("eth1", "eth1", "eth1"),
    "port": ("10246", 10246, 10246),
    "family": ("ipv6", "ipv6", "ipv6"),
    "daemonize": ("yes", True, True),
    "log_format": ("json", "json", "json"),
    "stop_grace": ("2.5", 2.5, 2.5),
    "handshake_timeout": ("4", 4.0, 4.0),
    "message_timeout": ("9.5", 9.5, 9.5),
    "max_clients": ("100", 100, 100),
    "max_clients_per_host": ("4", 4, 4),
    "max_local_clients": ("50", 50, 50),
    "source_buffer_limit": ("8", 8, 8),
    "source_budget": ("128", 128, 128),
    "max_env_transfers": ("4", 4, 4),
    "env_transfer_queue": ("0", 0, 0),
    "max_native_builds": ("2", 2, 2),
    "native_compilers": ("gcc,/usr/bin/clang-19", "gcc /usr/bin/clang-19", "gcc /usr/bin/clang-19"),
    "push_ahead": ("no", False, False),
    "key_file": ("/etc/iceserv/key", Path("/etc/iceserv/key"), "/etc/iceserv/key"),
    "previous_key_file": ("/etc/iceserv/old", Path("/etc/iceserv/old"), "/etc/iceserv/old"),
    "auth": ("off", "off", "off"),
    "encrypt": ("no", False, False),
    "http": ("[::1]", HostPort("::1", 8768), "[::1]:8768"),
}
SCHEDULER_SAMPLES = {
    "net_name": ("lab", "lab", "lab"),
    "persistent_client_connection": ("yes", True, True),
    "verbosity": ("v", 1, 1),
    "interface": ("eth0", "eth0", "eth0"),
    "log_file": ("/var/log/s.log", Path("/var/log/s.log"), "/var/log/s.log"),
    "port": ("8888", 8888, 8888),
    "family": ("ipv4", "ipv4", "ipv4"),
    "user": ("icecream", "icecream", "icecream"),
    "daemonize": ("1", True, True),
    "log_format": ("journal", "journal", "journal"),
    "handshake_timeout": ("2.5", 2.5, 2.5),
    "message_timeout": ("45", 45.0, 45.0),
    "max_connections": ("1000", 1000, 1000),
    "max_connections_per_host": ("4", 4, 4),
    "max_monitors": ("0", 0, 0),
    "max_monitors_per_host": ("1", 1, 1),
    "max_telnet_sessions": ("8", 8, 8),
    "max_telnet_sessions_per_host": ("2", 2, 2),
    "key_file": ("/etc/iceserv/key", Path("/etc/iceserv/key"), "/etc/iceserv/key"),
    "previous_key_file": ("/etc/iceserv/old", Path("/etc/iceserv/old"), "/etc/iceserv/old"),
    "auth": ("off", "off", "off"),
    "encrypt": ("no", False, False),
    "telnet_control": ("local", "local", "local"),
    "monitors": (
        "10.1.2.3/8, ::1",
        ("10.0.0.0/8", "::1/128"),
        ["10.0.0.0/8", "::1"],
    ),
    "http": ("127.0.0.1", HostPort("127.0.0.1", 8767), "127.0.0.1:8767"),
}
SAMPLES = {"daemon": DAEMON_SAMPLES, "scheduler": SCHEDULER_SAMPLES}
PREFIX = {"daemon": "ICECCD_", "scheduler": "ICECC_SCHEDULER_"}
# services.md §1.8: SUSE/Gentoo-main ICECREAM_* and Debian ICECC_* names.
DAEMON_ALIASES = {
    "ICECREAM_NICE_LEVEL": "nice_level",
    "ICECC_NICE_LEVEL": "nice_level",
    "ICECREAM_LOG_FILE": "log_file",
    "ICECC_LOG_FILE": "log_file",
    "ICECREAM_NETNAME": "net_name",
    "ICECC_NETNAME": "net_name",
    "ICECREAM_SCHEDULER_HOST": "scheduler_host",
    "ICECC_SCHEDULER_HOST": "scheduler_host",
    "ICECREAM_MAX_JOBS": "max_processes",
    "ICECC_MAX_JOBS": "max_processes",
    "ICECREAM_ALLOW_REMOTE": "allow_remote",
    "ICECC_ALLOW_REMOTE": "allow_remote",
    "ICECREAM_BASEDIR": "env_basedir",
    "ICECC_BASEDIR": "env_basedir",
    "ICECC_CACHE_LIMIT": "cache_limit",
    "ICECREAM_VERBOSITY": "verbosity",
}
SCHEDULER_ALIASES = {
    "ICECREAM_NETNAME": "net_name",
    "ICECC_NETNAME": "net_name",
    "ICECREAM_VERBOSITY": "verbosity",
    "ICECREAM_SCHEDULER_LOG_FILE": "log_file",
}
ALIASES = {"daemon": DAEMON_ALIASES, "scheduler": SCHEDULER_ALIASES}
LAYERS = ("flag", "env", "confd", "toml")
NOT_AN_INTEGER = "Input should be a valid integer, unable to parse string as an integer"
NOT_A_BOOLEAN = "expected yes or no (also true/false, on/off, 1/0)"
# Debian bookworm's /etc/icecc/icecc.conf (icecc 1.4-1), assignments as shipped.
DEBIAN_CONF = """\
ICECC_NICE_LEVEL="5"
ICECC_LOG_FILE="/var/log/iceccd.log"
ICECC_NETNAME=""
ICECC_MAX_JOBS=""
ICECC_ALLOW_REMOTE="yes"
ICECC_BASEDIR="/var/cache/icecc"
ICECC_SCHEDULER_LOG_FILE="/var/log/icecc_scheduler.log"
ICECC_SCHEDULER_HOST=""
ICECC_CACHE_LIMIT=""
"""


def _all_cases(table):
    return [(service, name) for service, fields in table.items() for name in fields]


def _messages(loaded):
    return [str(w) for w in loaded.warnings]


def _error_lines(load, **kwargs):
    with pytest.raises(ConfigError) as info:
        load(**kwargs)
    return list(info.value.details)


class TestCrosswalk:
    @pytest.mark.parametrize("service", ["daemon", "scheduler"])
    def test_samples_cover_every_field(self, service):
        """The tests below exercise every field of each model."""
        assert set(SAMPLES[service]) == set(names_for(Service(service)).fields)

    @pytest.mark.parametrize("service", ["daemon", "scheduler"])
    def test_aliases_are_the_reference_ones(self, service):
        """The alias table is exactly the cross-walk of services.md §1.8."""
        aliases = names_for(Service(service)).aliases
        assert {name: alias.field for name, alias in aliases.items()} == ALIASES[service]

    def test_bombo82_names_are_primary(self):
        """The Gentoo overlay's variables are primary names for their fields."""
        daemon = names_for(Service.DAEMON).primary_names()
        scheduler = names_for(Service.SCHEDULER).primary_names()
        for name in ("NICE_LEVEL", "HOST_NAME", "NET_NAME", "SCHEDULER_HOST", "MAX_PROCESSES"):
            assert f"ICECCD_{name}" in daemon
        for name in ("ALLOW_REMOTE", "ENV_BASEDIR", "CACHE_LIMIT", "VERBOSITY"):
            assert f"ICECCD_{name}" in daemon
        for name in ("NET_NAME", "PERSISTENT_CLIENT_CONNECTION", "VERBOSITY", "INTERFACE"):
            assert f"ICECC_SCHEDULER_{name}" in scheduler


class TestConfdLayer:
    @pytest.mark.parametrize(("service", "field"), _all_cases(SAMPLES))
    def test_every_primary_variable(self, load, service, field):
        """Each primary conf.d variable sets its field, with path:line provenance."""
        text, expected, _ = SAMPLES[service][field]
        name = PREFIX[service] + field.upper()
        loaded = load(service, confd=f'# header\n{name}="{text}"\n')
        assert getattr(loaded.settings, field) == expected
        origin = loaded.provenance[field]
        assert (origin.kind, origin.name, origin.line) == (OriginKind.CONFD, name, 2)
        assert str(origin) == f"{origin.path}:2: {name}"
        assert loaded.warnings == ()

    @pytest.mark.parametrize(("service", "alias"), _all_cases(ALIASES))
    def test_every_alias_warns_once(self, load, service, alias):
        """A deprecated alias sets its field and warns once, even when assigned twice."""
        field = ALIASES[service][alias]
        text, expected, _ = SAMPLES[service][field]
        loaded = load(service, confd=f'{alias}="{text}"\n{alias}="{text}"\n')
        assert getattr(loaded.settings, field) == expected
        assert loaded.provenance[field].name == alias
        primary = PREFIX[service] + field.upper()
        family = "Debian" if alias.startswith("ICECC_") else "SUSE/Gentoo-main"
        expected = f"{load.dir / DEFAULT_NAMES[service]}:2: {alias} ({family} name) is deprecated"
        expected += f"; use {primary}"
        if alias.endswith("MAX_JOBS"):
            expected += f" (and ICECCD_ALLOW_REMOTE=no instead of {alias}=0)"
        assert _messages(loaded) == [expected]

    def test_alias_warns_once_across_layered_files(self, load):
        """An alias set in both conf.d/iceccd and conf.d/iceccd.lab warns once."""
        load.write("iceccd", "ICECC_NETNAME=a\n")
        lab = load.write("iceccd.lab", "ICECC_NETNAME=b\n")
        loaded = load_daemon_settings(
            ["--confd", str(lab)], {}, locations=Locations(toml=None, rc_conf=())
        )
        assert loaded.settings.net_name == "b"
        assert len(loaded.warnings) == 1

    @pytest.mark.parametrize("alias", ["ICECREAM_MAX_JOBS", "ICECC_MAX_JOBS"])
    @pytest.mark.parametrize("zero", ["0", "00", " 0"])
    def test_max_jobs_zero_means_one_local_job(self, load, alias, zero):
        """The alias rule MAX_JOBS=0 gives -m 1 --no-remote, as the SUSE and Debian scripts do."""
        settings = load(confd=f'ICECC_ALLOW_REMOTE="yes"\n{alias}="{zero}"\n').settings
        assert (settings.max_processes, settings.allow_remote) == (1, False)

    def test_max_jobs_nonzero(self, load):
        """A non-zero MAX_JOBS is the number of processes and leaves remote jobs allowed."""
        settings = load(confd="ICECC_MAX_JOBS=6\n").settings
        assert (settings.max_processes, settings.allow_remote) == (6, True)

    def test_max_processes_zero_is_not_the_alias_rule(self, load):
        """ICECCD_MAX_PROCESSES=0 means 1.4's -m 0: zero slots, remote still allowed."""
        settings = load(confd="ICECCD_MAX_PROCESSES=0\n").settings
        assert (settings.max_processes, settings.allow_remote) == (0, True)

    @pytest.mark.parametrize("order", ["primary first", "alias first"])
    def test_primary_beats_alias(self, load, order):
        """When both are set, the primary name wins whatever the order."""
        lines = ["ICECCD_NET_NAME=primary", "ICECC_NETNAME=alias"]
        if order == "alias first":
            lines.reverse()
        assert load(confd="\n".join(lines) + "\n").settings.net_name == "primary"

    @pytest.mark.parametrize("name", ["ICECCD_MAX_PROCESSES", "ICECC_MAX_JOBS", "ICECCD_PORT"])
    def test_empty_value_means_default(self, load, name):
        """VAR="" (or blanks only) keeps the default, as the init scripts' ${V:+...} did."""
        loaded = load(confd=f'ICECCD_PORT=1\n{name}=""\nICECCD_NICE_LEVEL=   \n')
        assert loaded.settings.max_processes is None
        assert loaded.settings.nice_level == 5
        assert (loaded.settings.port == 1) is (name != "ICECCD_PORT")

    def test_overlay_bugs_are_not_reproduced(self, load):
        """Net name, node name and ALLOW_REMOTE=no work as their documentation says."""
        settings = load(
            confd='ICECCD_NET_NAME="lab"\nICECCD_HOST_NAME="node7"\nICECCD_ALLOW_REMOTE="no"\n'
        ).settings
        assert (settings.net_name, settings.host_name, settings.allow_remote) == (
            "lab",
            "node7",
            False,
        )
        scheduler = load("scheduler", confd='ICECC_SCHEDULER_NET_NAME="lab"\n').settings
        assert scheduler.net_name == "lab"

    @pytest.mark.parametrize(
        ("name", "message"),
        [
            (
                "ICECCD_MAX_PROCESS",
                "unknown variable ICECCD_MAX_PROCESS; did you mean ICECCD_MAX_PROCESSES?",
            ),
            ("MAX_PROCESSES", "unknown variable MAX_PROCESSES; did you mean ICECCD_MAX_PROCESSES?"),
            ("ICECCD_NETNAME", "unknown variable ICECCD_NETNAME; did you mean ICECCD_NET_NAME?"),
            ("ICECC_ZZZZZZZZZZZ", "unknown variable ICECC_ZZZZZZZZZZZ is ignored"),
            # Closest to the deprecated ICECC_MAX_JOBS: its current name is suggested.
            (
                "ICECCD_MAX_JOBZ",
                "unknown variable ICECCD_MAX_JOBZ; did you mean ICECCD_MAX_PROCESSES?",
            ),
        ],
    )
    def test_unknown_variable_warns(self, load, name, message):
        """An unknown variable is ignored with a warning naming the closest known one."""
        loaded = load(confd=f"# x\n{name}=3\n")
        assert _messages(loaded) == [f"{load.dir / 'iceccd'}:2: {message}"]

    def test_helper_variables_are_silent(self, load):
        """Unrelated variables used for $VAR references cause no warning."""
        loaded = load(confd="CACHE=/srv/cache\nICECCD_ENV_BASEDIR=$CACHE/envs\n")
        assert loaded.settings.env_basedir == Path("/srv/cache/envs")
        assert loaded.warnings == ()

    def test_shared_debian_file(self, load):
        """Debian's icecc.conf serves both services; only the deprecations are reported."""
        path = load.write("icecc.conf", DEBIAN_CONF)
        argv = ["--confd", str(path)]
        locations = Locations(toml=None, rc_conf=())
        daemon = load_daemon_settings(argv, {}, locations=locations)
        scheduler = load_scheduler_settings(argv, {}, locations=locations)
        assert daemon.settings.env_basedir == Path("/var/cache/icecc")
        assert daemon.settings.log_file == Path("/var/log/iceccd.log")
        assert scheduler.settings.log_file == Path("/var/log/icecc_scheduler.log")
        assert [w.message.split()[0] for w in daemon.warnings] == [
            "ICECC_NICE_LEVEL",
            "ICECC_LOG_FILE",
            "ICECC_NETNAME",
            "ICECC_MAX_JOBS",
            "ICECC_ALLOW_REMOTE",
            "ICECC_BASEDIR",
            "ICECC_SCHEDULER_HOST",
            "ICECC_CACHE_LIMIT",
        ]
        assert [w.message.split()[0] for w in scheduler.warnings] == ["ICECC_NETNAME"]

    def test_other_service_variables_are_silent(self, load):
        """The daemon ignores scheduler variables and vice versa, without warnings."""
        daemon_only = "ICECCD_PORT=1\nICECC_MAX_JOBS=3\nICECREAM_BASEDIR=/x\n"
        scheduler_only = "ICECC_SCHEDULER_PORT=2\nICECREAM_SCHEDULER_LOG_FILE=/x\n"
        assert load(confd=scheduler_only).warnings == ()
        assert load("scheduler", confd=daemon_only).warnings == ()

    @pytest.mark.parametrize(("value", "warns"), [("yes", True), ("no", False)])
    def test_run_scheduler_is_explained(self, load, value, warns):
        """SUSE's ICECREAM_RUN_SCHEDULER=yes warns that the scheduler is its own service."""
        messages = _messages(load(confd=f"ICECREAM_RUN_SCHEDULER={value}\n"))
        assert bool(messages) is warns
        assert all("enable icecc-scheduler" in m for m in messages)


class TestEnvironment:
    @pytest.mark.parametrize(("service", "field"), _all_cases(SAMPLES))
    def test_every_variable(self, load, service, field):
        """Each primary name read from the environment sets its field (env provenance)."""
        text, expected, _ = SAMPLES[service][field]
        name = PREFIX[service] + field.upper()
        loaded = load(service, env={name: text})
        assert getattr(loaded.settings, field) == expected
        assert str(loaded.provenance[field]) == f"env {name}"

    def test_empty_and_foreign_variables_are_ignored(self, load):
        """Empty values, alias names and other-case names in the environment change nothing."""
        env = {"ICECCD_PORT": "", "ICECC_MAX_JOBS": "3", "iceccd_nice_level": "1"}
        assert load(env=env).settings == load().settings

    def test_icecc_scheduler_variables(self, load):
        """1.4's ICECC_SCHEDULER works; USE_SCHEDULER works with a deprecation warning."""
        loaded = load(env={"USE_SCHEDULER": "old"})
        assert loaded.settings.scheduler_host == HostPort("old")
        assert _messages(loaded) == [
            "env USE_SCHEDULER: USE_SCHEDULER is deprecated; use ICECCD_SCHEDULER_HOST"
        ]
        both = load(env={"USE_SCHEDULER": "old", "ICECC_SCHEDULER": "new"}).settings
        assert both.scheduler_host == HostPort("new")
        env = {"ICECCD_SCHEDULER_HOST": "primary", "ICECC_SCHEDULER": "new"}
        assert load(env=env).settings.scheduler_host == HostPort("primary")


class TestToml:
    @pytest.mark.parametrize(("service", "field"), _all_cases(SAMPLES))
    def test_every_key(self, load, service, field):
        """Each key of the service's table sets its field, with path:line provenance."""
        _, expected, value = SAMPLES[service][field]
        literal = f'"{value}"' if isinstance(value, str) else str(value).lower()
        loaded = load(service, toml=f"# x\n[{service}]\n\n{field} = {literal}\n")
        assert getattr(loaded.settings, field) == expected
        assert (
            str(loaded.provenance[field]) == f"{load.dir / 'iceserv.toml'}:4: [{service}] {field}"
        )

    def test_missing_default_file_is_fine(self, load, tmp_path):
        """A missing file at the standard location just means no TOML settings."""
        locations = Locations(confd=(), toml=tmp_path / "absent.toml", rc_conf=())
        assert load_daemon_settings([], {}, locations=locations).settings == load().settings

    @pytest.mark.parametrize(
        ("text", "line", "reason"),
        [
            (
                "[daemon]\nport = 1\nmax_procesess = 3\n",
                3,
                "[daemon] max_procesess=3: unknown setting; did you mean max_processes?",
            ),
            (
                "[daemon]\nport = 'x'\n",
                2,
                f"[daemon] port='x': {NOT_AN_INTEGER}",
            ),
            (
                "[daemon]\n\"allow_remote\" = 'maybe'\n",
                2,
                f"[daemon] allow_remote='maybe': {NOT_A_BOOLEAN}",
            ),
            (
                "[daemon]\nport = 1\n[iceccd]\nport = 2\n",
                3,
                "unknown table [iceccd]; expected [daemon], [scheduler], [network] or [cluster]",
            ),
            ("daemon = 5\n", 1, "daemon must be a table [daemon]"),
            ("[daemon]\nport = = 1\n", 2, "invalid TOML: Invalid value"),
        ],
    )
    def test_errors_name_the_line(self, load, text, line, reason):
        """TOML problems are one line with the file and the line of the key."""
        assert _error_lines(load, toml=text) == [f"{load.dir / 'iceserv.toml'}:{line}: {reason}"]

    def test_other_table_is_not_validated(self, load):
        """The daemon does not fail on a bad [scheduler] table (the scheduler will)."""
        assert load(toml="[scheduler]\nport = 'x'\n").settings.port == 10245

    def test_explicit_config_must_exist(self, tmp_path):
        """--config naming a missing file is an error."""
        with pytest.raises(ConfigError, match=r"absent.toml: no such file$"):
            load_daemon_settings(["--config", str(tmp_path / "absent.toml")], {})


class TestPrecedence:
    def test_reference_example(self, load):
        """services.md §3.1: conf.d beats TOML, the environment beats conf.d, flags beat all."""
        confd = "ICECCD_MAX_PROCESSES=8\nICECCD_ALLOW_REMOTE=no\n"
        toml = "[daemon]\nmax_processes = 2\nnet_name = 'fromtoml'\n"
        plain = load(confd=confd, toml=toml)
        assert (plain.settings.max_processes, plain.settings.net_name) == (8, "fromtoml")
        assert plain.provenance["net_name"].kind is OriginKind.TOML
        env = load(confd=confd, toml=toml, env={"ICECCD_MAX_PROCESSES": "12"})
        assert env.settings.max_processes == 12
        assert str(env.provenance["max_processes"]) == "env ICECCD_MAX_PROCESSES"
        flag = load(
            argv=["--max-processes", "3"],
            confd=confd,
            toml=toml,
            env={"ICECCD_MAX_PROCESSES": "12"},
        )
        assert flag.settings.max_processes == 3
        assert str(flag.provenance["max_processes"]) == "flag --max-processes"
        assert flag.settings.allow_remote is False

    @pytest.mark.parametrize("service", ["daemon", "scheduler"])
    @pytest.mark.parametrize("top", LAYERS)
    def test_each_level(self, load, service, top):
        """With every layer below *top* also setting the port, *top*'s value wins."""
        below = LAYERS[LAYERS.index(top) :]
        port = {"flag": 1001, "env": 1002, "confd": 1003, "toml": 1004}
        name = PREFIX[service] + "PORT"
        loaded = load(
            service,
            argv=["-p", str(port["flag"])] if "flag" in below else [],
            env={name: str(port["env"])} if "env" in below else {},
            confd=f"{name}={port['confd']}\n" if "confd" in below else None,
            toml=f"[{service}]\nport = {port['toml']}\n" if "toml" in below else None,
        )
        assert loaded.settings.port == port[top]
        assert loaded.provenance["port"].kind == OriginKind(top)

    def test_defaults_last(self, load):
        """Fields no layer sets keep their defaults, with "default" provenance."""
        loaded = load()
        assert {str(o) for o in loaded.provenance.values()} == {"default"}
        assert set(loaded.provenance) == set(DAEMON_SAMPLES)

    def test_bad_value_in_an_overridden_layer_is_harmless(self, load):
        """Only effective values are validated: a flag can override a broken conf.d value."""
        loaded = load(argv=["-m", "2"], confd="ICECCD_MAX_PROCESSES=eight\n")
        assert loaded.settings.max_processes == 2


class TestErrors:
    def test_confd_value(self, load):
        """A bad conf.d value gives path:line: NAME='value': reason (services.md §3.2)."""
        lines = _error_lines(load, confd="A=1\nB=2\nICECCD_MAX_PROCESSES='eight'\n")
        assert lines == [f"{load.dir / 'iceccd'}:3: ICECCD_MAX_PROCESSES='eight': {NOT_AN_INTEGER}"]

    def test_alias_value(self, load):
        """A bad alias value names the alias, where it was written."""
        lines = _error_lines(load, confd="ICECC_MAX_JOBS=many\n")
        assert lines == [f"{load.dir / 'iceccd'}:1: ICECC_MAX_JOBS='many': {NOT_AN_INTEGER}"]

    def test_environment_value(self, load):
        """A bad environment value gives env NAME='value': reason."""
        assert _error_lines(load, env={"ICECCD_ALLOW_REMOTE": "maybe"}) == [
            f"env ICECCD_ALLOW_REMOTE='maybe': {NOT_A_BOOLEAN}"
        ]

    @pytest.mark.parametrize("flag", ["--max-processes", "-m"])
    def test_flag_value(self, load, flag):
        """A bad flag value names the flag as given."""
        assert _error_lines(load, argv=[flag, "-1"]) == [
            f"flag {flag}='-1': Input should be greater than or equal to 0"
        ]

    def test_one_line_per_bad_value(self, load):
        """Several bad values give one line each, in layer order, and nothing else."""
        lines = _error_lines(
            load,
            argv=["--nice", "40"],
            env={"ICECCD_PORT": "0"},
            confd="ICECCD_VERBOSITY=vvvv\nICECCD_ENV_BASEDIR=\"'/var/cache/icecream'\"\n",
        )
        path = load.dir / "iceccd"
        assert lines == [
            "flag --nice='40': Input should be less than or equal to 19",
            "env ICECCD_PORT='0': Input should be greater than or equal to 1",
            f"{path}:1: ICECCD_VERBOSITY='vvvv': Input should be less than or equal to 3",
            f"{path}:2: ICECCD_ENV_BASEDIR=\"'/var/cache/icecream'\": must be an absolute path",
        ]

    def test_error_fields(self, load):
        """The error carries the location and the name of the first bad value."""
        with pytest.raises(ConfigError) as info:
            load(confd="ICECCD_PORT=x\n")
        assert (info.value.source, info.value.name) == (f"{load.dir / 'iceccd'}:1", "ICECCD_PORT")

    def test_syntax_error(self, load):
        """A conf.d file outside the sh subset fails with its line."""
        lines = _error_lines(load, confd="ICECCD_PORT=1\nICECCD_USER=$(id -un)\n")
        assert lines == [f"{load.dir / 'iceccd'}:2: command substitution $(...) is not allowed"]

    def test_flag_syntax_error(self, load):
        """A malformed command line fails before any file is read."""
        assert _error_lines(load, argv=["--net-name", "x"]) == ["flag --net-name: not recognized"]

    def test_explicit_confd_must_exist(self, tmp_path):
        """--confd naming a missing file is an error."""
        with pytest.raises(ConfigError, match=r"nope: No such file or directory$"):
            load_daemon_settings(["--confd", str(tmp_path / "nope")], {})


class TestOpenRCLayers:
    def _load(self, path, env=None):
        return load_daemon_settings(
            ["--confd", str(path)], env or {}, locations=Locations(toml=None, rc_conf=())
        )

    def test_multiplexed_service_reads_the_base_first(self, load):
        """conf.d/iceccd.lab is read after conf.d/iceccd, as openrc-run does."""
        load.write("iceccd", "ICECCD_PORT=1\nICECCD_NET_NAME=base\n")
        lab = load.write("iceccd.lab", "ICECCD_NET_NAME=lab\n")
        loaded = self._load(lab)
        assert (loaded.settings.port, loaded.settings.net_name) == (1, "lab")
        assert Path(loaded.provenance["port"].path).name == "iceccd"

    def test_runlevel_variant_replaces_the_file(self, load):
        """With RC_RUNLEVEL set, conf.d/NAME.RUNLEVEL is read instead of conf.d/NAME."""
        path = load.write("iceccd", "ICECCD_PORT=1\n")
        load.write("iceccd.default", "ICECCD_NICE_LEVEL=7\n")
        loaded = self._load(path, {"RC_RUNLEVEL": "default"})
        assert (loaded.settings.port, loaded.settings.nice_level) == (10245, 7)
        assert self._load(path, {"RC_RUNLEVEL": "boot"}).settings.port == 1

    def test_missing_base_is_fine(self, load):
        """A multiplexed file without a base file is read alone."""
        assert self._load(load.write("iceccd.lab", "ICECCD_PORT=3\n")).settings.port == 3


class TestRcConf:
    def test_rc_conf_variables_can_be_referenced(self, load):
        """Variables from rc.conf and rc.conf.d/*.conf are visible to $VAR but are not settings."""
        rc = load.write("rc.conf", "ICECCD_PORT=9\nBASE=/srv\n")
        load.write("rc.conf.d/x.conf", "SUB=envs\n")
        loaded = load(confd="ICECCD_ENV_BASEDIR=$BASE/$SUB\n", rc_conf=[rc, load.dir / "rc.conf.d"])
        assert loaded.settings.env_basedir == Path("/srv/envs")
        assert loaded.settings.port == 10245

    def test_broken_rc_conf_only_warns(self, load):
        """rc.conf is not ours: a line outside the subset is a warning, not an error."""
        rc = load.write("rc.conf", "rc_parallel=NO\nunicode=$(locale)\n")
        loaded = load(confd="ICECCD_PORT=2\n", rc_conf=[rc])
        assert loaded.settings.port == 2
        reason = "command substitution $(...) is not allowed"
        assert _messages(loaded) == [f"{rc}: ignored for $VAR references: {rc}:2: {reason}"]


class TestImports:
    def test_config_imports_no_service_stack(self):
        """Importing iceserv.config pulls in no structlog, dbus and no other iceserv package."""
        code = (
            "import sys, iceserv.config\n"
            "prefixes = ('iceserv', 'structlog', 'dbus_fast')\n"
            "print(' '.join(m for m in sys.modules if m.startswith(prefixes)))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        allowed = {"iceserv", "iceserv.errors"}
        assert {m for m in out.stdout.split() if not m.startswith("iceserv.config")} <= allowed
