"""Tests for iceserv.app.config_cli: ``iceserv config show|check|migrate`` as a real program."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from iceserv.config import (
    Locations,
    Service,
    load_daemon_settings,
    load_scheduler_settings,
    names_for,
)

ROOT = Path(__file__).resolve().parents[2]
ICESERV = Path(sys.executable).parent / "iceserv"
FIXTURES = Path(__file__).parent / "fixtures" / "broken"
SAMPLE_CONFD = {
    "daemon": ROOT / "etc/conf.d/iceccd",
    "scheduler": ROOT / "etc/conf.d/icecc-scheduler",
}
SAMPLE_TOML = ROOT / "etc/iceserv/iceserv.toml"
NOT_AN_INTEGER = "Input should be a valid integer, unable to parse string as an integer"

# A conf.d file using every daemon variable, mixing primary names and aliases.
FULL_DAEMON = """\
ICECCD_NICE_LEVEL="7"
ICECCD_HOST_NAME="node7"
ICECCD_FAMILY="ipv6"
ICECC_NETNAME="lab"
ICECCD_SCHEDULER_HOST="sched.lab:9000"
ICECREAM_MAX_JOBS="0"
ICECCD_ENV_BASEDIR="/srv/icecream"
ICECC_CACHE_LIMIT="1024"
ICECREAM_VERBOSITY="-vv"
ICECCD_LOG_FILE="/var/log/icecream/iceccd.log"
ICECCD_USER="icecc"
ICECCD_INTERFACE="eth1"
ICECCD_PORT="10246"
ICECCD_DAEMONIZE="yes"
ICECCD_LOG_FORMAT="json"
ICECCD_STOP_GRACE="5.5"
ICECCD_HANDSHAKE_TIMEOUT="5"
ICECCD_MESSAGE_TIMEOUT="12.5"
ICECCD_MAX_CLIENTS="500"
ICECCD_MAX_CLIENTS_PER_HOST="8"
ICECCD_MAX_LOCAL_CLIENTS="300"
ICECCD_SOURCE_BUFFER_LIMIT="8"
ICECCD_SOURCE_BUDGET="32"
ICECCD_MAX_ENV_TRANSFERS="3"
ICECCD_ENV_TRANSFER_QUEUE="4"
ICECCD_MAX_NATIVE_BUILDS="2"
ICECCD_NATIVE_COMPILERS="gcc"
ICECCD_PUSH_AHEAD="no"
ICECCD_HTTP="127.0.0.1:9768"
ICECCD_KEY_FILE="/etc/iceserv/network.key"
ICECCD_PREVIOUS_KEY_FILE="/etc/iceserv/network.key.old"
ICECCD_AUTH="prefer"
ICECCD_ENCRYPT="yes"
"""
FULL_SCHEDULER = """\
ICECC_SCHEDULER_NET_NAME="lab"
ICECC_SCHEDULER_PERSISTENT_CLIENT_CONNECTION="yes"
ICECC_SCHEDULER_VERBOSITY="vvv"
ICECC_SCHEDULER_INTERFACE=eth0
ICECREAM_SCHEDULER_LOG_FILE="/var/log/icecream/scheduler.log"
ICECC_SCHEDULER_PORT="8800"
ICECC_SCHEDULER_FAMILY="ipv4"
ICECC_SCHEDULER_USER="icecream"
ICECC_SCHEDULER_DAEMONIZE="no"
ICECC_SCHEDULER_LOG_FORMAT="journal"
ICECC_SCHEDULER_HANDSHAKE_TIMEOUT="5"
ICECC_SCHEDULER_MESSAGE_TIMEOUT="10.5"
ICECC_SCHEDULER_MAX_CONNECTIONS="2000"
ICECC_SCHEDULER_MAX_CONNECTIONS_PER_HOST="8"
ICECC_SCHEDULER_MAX_MONITORS="20"
ICECC_SCHEDULER_MAX_MONITORS_PER_HOST="2"
ICECC_SCHEDULER_MAX_TELNET_SESSIONS="10"
ICECC_SCHEDULER_MAX_TELNET_SESSIONS_PER_HOST="3"
ICECC_SCHEDULER_HTTP="127.0.0.1:8767"
ICECC_SCHEDULER_KEY_FILE="/etc/iceserv/network.key"
ICECC_SCHEDULER_PREVIOUS_KEY_FILE="/etc/iceserv/network.key.old"
ICECC_SCHEDULER_AUTH="require"
ICECC_SCHEDULER_ENCRYPT="yes"
ICECC_SCHEDULER_TELNET_CONTROL="off"
ICECC_SCHEDULER_MONITORS="10.0.0.0/8, fd00::/64 192.0.2.7"
"""

# fixture -> (line, the rest of the one error line after "path:line: ")
BROKEN = {
    "iceccd.bad-integer": (4, f"ICECCD_MAX_PROCESSES='eight': {NOT_AN_INTEGER}"),
    "iceccd.bad-boolean": (
        2,
        "ICECCD_ALLOW_REMOTE='maybe': expected yes or no (also true/false, on/off, 1/0)",
    ),
    "iceccd.command": (3, "command 'mkdir' is not allowed: only NAME=value assignments"),
    "iceccd.substitution": (5, "command substitution $(...) is not allowed"),
    "iceccd.unterminated": (
        3,
        "unterminated double quote (the quoted string from line 2 to 3 may lack its closing quote)",
    ),
    "iceccd.quoted-default": (
        2,
        'only a literal word is supported in ${ICECREAM_BASEDIR:-...}, not "\'"',
    ),
    "iceccd.relative-basedir": (
        4,
        "ICECCD_ENV_BASEDIR=\"'/var/cache/icecream'\": must be an absolute path",
    ),
    "iceccd.verbosity": (1, "ICECCD_VERBOSITY='vvvv': Input should be less than or equal to 3"),
    "icecc-scheduler.bad-port": (
        3,
        "ICECC_SCHEDULER_PORT='70000': Input should be less than or equal to 65534",
    ),
    "icecc-scheduler.bashism": (2, "bash-only '+=' is not supported"),
}


def _run(*args, env=None, check=False):
    """Run ``iceserv config ARGS`` with an environment free of icecream variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ICECC", "USE_SCHED"))}
    return subprocess.run(
        [str(ICESERV), "config", *map(str, args)],
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        check=check,
        cwd=ROOT,
    )


def _errors(result):
    return [line for line in result.stderr.splitlines() if not line.startswith("iceserv: warning:")]


class TestCheck:
    @pytest.mark.parametrize("service", ["daemon", "scheduler"])
    def test_shipped_samples_pass(self, service):
        """The shipped conf.d samples (and the TOML sample) check clean, with no warnings."""
        result = _run(
            "check", "--confd", SAMPLE_CONFD[service].relative_to(ROOT), "--config", SAMPLE_TOML
        )
        assert (result.returncode, result.stdout, result.stderr) == (
            0,
            f"{service} configuration OK\n",
            "",
        )

    @pytest.mark.parametrize("name", sorted(BROKEN))
    def test_broken_fixture_fails_with_its_line(self, name):
        """Each broken fixture fails with exit 78 and one line naming the right file:line."""
        path = FIXTURES / name
        result = _run("check", "--confd", path)
        line, reason = BROKEN[name]
        assert result.returncode == 78
        assert _errors(result) == [f"iceserv: {path}:{line}: {reason}"]
        assert result.stdout == ""

    def test_broken_toml(self):
        """A misspelt TOML key fails with exit 78, its line and a suggestion."""
        path = FIXTURES / "iceserv.bad-key.toml"
        result = _run("check", "--daemon", "--confd", SAMPLE_CONFD["daemon"], "--config", path)
        assert result.returncode == 78
        reason = "unknown setting; did you mean max_processes?"
        assert _errors(result) == [f"iceserv: {path}:4: [daemon] max_procesess=3: {reason}"]

    def test_environment_is_checked(self):
        """A bad value in the environment fails the check with an env line."""
        result = _run("check", "--confd", SAMPLE_CONFD["daemon"], env={"ICECCD_PORT": "x"})
        assert result.returncode == 78
        assert _errors(result) == [f"iceserv: env ICECCD_PORT='x': {NOT_AN_INTEGER}"]

    def test_missing_file(self, tmp_path):
        """A --confd file that does not exist fails with exit 78."""
        result = _run("check", "--confd", tmp_path / "iceccd")
        assert result.returncode == 78
        assert _errors(result) == [f"iceserv: {tmp_path / 'iceccd'}: No such file or directory"]

    def test_shared_file_checks_both_services_and_warns(self, tmp_path):
        """A Debian-style file is checked for both services; deprecations go to stderr."""
        path = tmp_path / "icecc.conf"
        path.write_text('ICECC_NETNAME="lab"\nICECC_MAX_JOBS="0"\n')
        result = _run("check", "--confd", path)
        assert result.returncode == 0
        assert result.stdout == (
            "daemon configuration OK (2 warnings)\nscheduler configuration OK (1 warning)\n"
        )
        assert result.stderr.count("iceserv: warning: ") == 3
        assert f"{path}:2: ICECC_MAX_JOBS (Debian name) is deprecated" in result.stderr


class TestShow:
    def test_text(self, tmp_path):
        """Text output lists every setting with its value and where it came from."""
        path = tmp_path / "iceccd"
        path.write_text("ICECCD_MAX_PROCESSES=8\n")
        result = _run("show", "--daemon", "--confd", path, env={"ICECCD_NICE_LEVEL": "3"})
        assert result.returncode == 0, result.stderr
        lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
        assert result.stdout.startswith("[daemon]\n")
        assert lines["max_processes"].split()[1:] == ["8", f"{path}:1:", "ICECCD_MAX_PROCESSES"]
        assert lines["nice_level"].split()[1:] == ["3", "env", "ICECCD_NICE_LEVEL"]
        assert lines["port"].split()[1:] == ["10245", "default"]
        assert len(lines) == 34

    def test_json(self, tmp_path):
        """JSON output maps each setting to its value and source."""
        path = tmp_path / "icecc-scheduler"
        path.write_text("ICECC_SCHEDULER_PORT=8800\n")
        result = _run("show", "--confd", path, "--format", "json", check=True)
        document = json.loads(result.stdout)
        assert list(document) == ["scheduler"]
        assert document["scheduler"]["port"] == {
            "value": 8800,
            "source": f"{path}:1: ICECC_SCHEDULER_PORT",
        }
        assert document["scheduler"]["log_file"] == {"value": None, "source": "default"}

    def test_toml_reads_back(self, tmp_path):
        """TOML output is valid TOML that, used as --config, gives the same settings."""
        confd = tmp_path / "iceccd"
        confd.write_text(FULL_DAEMON)
        shown = _run("show", "--daemon", "--confd", confd, "--format", "toml", check=True).stdout
        assert "# " + str(confd) + ":1: ICECCD_NICE_LEVEL" in shown
        toml = tmp_path / "shown.toml"
        toml.write_text(shown)
        none = Locations(confd=(), toml=None, rc_conf=())
        from_confd = load_daemon_settings(["--confd", str(confd)], {}, locations=none)
        from_toml = load_daemon_settings(["--config", str(toml)], {}, locations=none)
        assert from_toml.settings == from_confd.settings

    def test_error_exit(self):
        """show fails like check on a broken file."""
        result = _run("show", "--confd", FIXTURES / "iceccd.bad-integer")
        assert result.returncode == 78


class TestMigrate:
    @pytest.mark.parametrize(
        ("service", "text", "name", "loader"),
        [
            ("daemon", FULL_DAEMON, "iceccd", load_daemon_settings),
            ("scheduler", FULL_SCHEDULER, "icecc-scheduler", load_scheduler_settings),
        ],
    )
    def test_round_trip(self, tmp_path, service, text, name, loader):
        """conf.d -> TOML -> settings equals conf.d -> settings."""
        confd = tmp_path / name
        confd.write_text(text)
        output = tmp_path / "iceserv.toml"
        result = _run("migrate", "--confd", confd, "-o", output)
        assert result.returncode == 0, result.stderr
        document = tomllib.loads(output.read_text())
        assert list(document) == [service]
        assert set(document[service]) == set(names_for(Service(service)).fields)
        none = Locations(confd=(), toml=None, rc_conf=())
        from_confd = loader(["--confd", str(confd)], {}, locations=none).settings
        from_toml = loader(["--config", str(output)], {}, locations=none).settings
        assert from_toml == from_confd
        assert from_toml != loader([], {}, locations=none).settings

    def test_only_confd_values_are_written(self, tmp_path):
        """Defaults and the environment stay out of the migrated file."""
        confd = tmp_path / "iceccd"
        confd.write_text('ICECCD_PORT="10300"\nICECC_MAX_JOBS=0\n')
        result = _run("migrate", "--confd", confd, env={"ICECCD_NICE_LEVEL": "1"}, check=True)
        assert result.stdout.startswith("# iceserv configuration migrated from ")
        assert tomllib.loads(result.stdout) == {
            "daemon": {"max_processes": 1, "allow_remote": False, "port": 10300}
        }

    def test_refuses_to_overwrite(self, tmp_path):
        """An existing output file is kept unless --force is given."""
        confd = tmp_path / "iceccd"
        confd.write_text("ICECCD_PORT=10300\n")
        output = tmp_path / "out.toml"
        output.write_text("keep")
        assert _run("migrate", "--confd", confd, "-o", output).returncode == 73
        assert output.read_text() == "keep"
        assert _run("migrate", "--confd", confd, "-o", output, "--force").returncode == 0
        assert "port = 10300" in output.read_text()

    def test_broken_input(self):
        """A broken conf.d file fails the migration with exit 78 and writes nothing."""
        result = _run("migrate", "--confd", FIXTURES / "iceccd.command")
        assert (result.returncode, result.stdout) == (78, "")


class TestUsage:
    def test_no_action_prints_help(self):
        """'iceserv config' without an action prints the help and exits 2."""
        result = _run()
        assert result.returncode == 2
        assert "show" in result.stderr
        assert "migrate" in result.stderr

    def test_daemon_and_scheduler_exclude_each_other(self):
        """--daemon and --scheduler cannot be combined."""
        assert _run("show", "--daemon", "--scheduler").returncode == 2
