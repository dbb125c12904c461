"""ClientEnv: every variable of reference §8.6 read once, with 1.4's parsing rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from iceserv.client.env import SAFEGUARD_VARIABLE, ClientEnv, atoi, truthy
from iceserv.client.log import ClientLog


def env(**values: str) -> ClientEnv:
    return ClientEnv.from_mapping(values)


class TestParsing:
    def test_unset_means_defaults(self):
        """With nothing set, every field has 1.4's default."""
        e = env()
        assert (e.icecc, e.version, e.debug_level, e.logfile) == ("", None, 0, None)
        assert (e.repeat_rate, e.preferred_host, e.cc, e.cxx) == (0, "", None, None)
        assert (e.remote_cpp, e.clang_remote_cpp, e.ignore_unverified) == (None, None, False)
        assert (e.extrafiles, e.color_diagnostics, e.caret_workaround) == (None, None, None)
        assert (e.compression_level, e.env_compression, e.slow_network) == (None, None, False)
        assert (e.test_socket, e.test_remotebuild, e.safeguard_level) == (None, False, 0)
        assert (e.term, e.emacs, e.gcc_colors, e.home, e.path) == (None, False, None, None, "")

    @pytest.mark.parametrize(("value", "disabled", "local_only"), [
        ("disable", True, False), ("DISABLE", True, False), ("no", False, True),
        ("No", False, True), ("yes", False, False), ("", False, False),
    ])  # fmt: skip
    def test_icecc_switch(self, value, disabled, local_only):
        """ICECC=disable / ICECC=no, case-insensitively; other values change nothing."""
        e = env(ICECC=value)
        assert (e.disabled, e.local_only) == (disabled, local_only)

    @pytest.mark.parametrize(("value", "level"), [
        ("info", 2), ("INFO", 2), ("warning", 1), ("warnings", 1), ("debug", 3), ("error", 3),
        ("", 3), ("anything", 3),
    ])  # fmt: skip
    def test_debug_levels(self, value, level):
        """ICECC_DEBUG: info, warning(s), and any other value (even "error") means debug."""
        assert env(ICECC_DEBUG=value).debug_level == level

    @pytest.mark.parametrize(("value", "expected"), [
        (None, None), ("", False), ("0", False), ("00", False), ("0x", False), ("1", True),
        ("yes", True), ("no", True),
    ])  # fmt: skip
    def test_switch_truthiness(self, value, expected):
        """ICECC_REMOTE_CPP-style switches: set means on unless empty or starting with 0."""
        assert truthy(value) is expected
        names = ("ICECC_REMOTE_CPP", "ICECC_CLANG_REMOTE_CPP")
        e = ClientEnv.from_mapping({} if value is None else dict.fromkeys(names, value))
        assert e.remote_cpp is expected
        assert e.clang_remote_cpp is expected

    @pytest.mark.parametrize(("value", "expected"), [
        ("5", 5), ("  12abc", 12), ("-3", -3), ("+7", 7), ("abc", 0), ("", 0),
    ])  # fmt: skip
    def test_repeat_rate_is_atoi(self, value, expected):
        """ICECC_REPEAT_RATE is read with C atoi."""
        assert atoi(value) == expected
        assert env(ICECC_REPEAT_RATE=value).repeat_rate == expected

    @pytest.mark.parametrize(("value", "expected"), [
        ("", None), ("3", 3), ("0x10", 16), ("010", 8), ("19", 19), ("3x", None), ("fast", None),
    ])  # fmt: skip
    def test_compression_level_is_whole_strtol(self, value, expected):
        """ICECC_COMPRESSION: strtol base 0 that must consume everything, else the default."""
        assert env(ICECC_COMPRESSION=value).compression_level == expected

    @pytest.mark.parametrize(("value", "level"), [("1", 1), ("2", 2), ("0", 1), ("x", 1),
                                                  ("", 1), ("-1", -1)])  # fmt: skip
    def test_safeguard_level(self, value, level):
        """_ICECC_SAFEGUARD: a digit; set but not a positive number counts as 1."""
        assert env(_ICECC_SAFEGUARD=value).safeguard_level == level

    def test_presence_flags(self):
        """ICECC_IGNORE_UNVERIFIED, ICECC_TEST_REMOTEBUILD and EMACS count when set, even empty."""
        e = env(ICECC_IGNORE_UNVERIFIED="", ICECC_TEST_REMOTEBUILD="", EMACS="")
        assert (e.ignore_unverified, e.test_remotebuild, e.emacs) == (True, True, True)

    def test_slow_network_needs_a_leading_1(self):
        """ICECC_SLOW_NETWORK is on only when its first character is 1."""
        assert env(ICECC_SLOW_NETWORK="1").slow_network
        assert env(ICECC_SLOW_NETWORK="10").slow_network
        assert not env(ICECC_SLOW_NETWORK="yes").slow_network

    def test_plain_strings_are_kept(self):
        """Strings are kept verbatim (empty is not unset)."""
        e = env(ICECC_VERSION="", ICECC_CC="/opt/cc", ICECC_CXX="/opt/c++",
                ICECC_PREFERRED_HOST="big", ICECC_EXTRAFILES="a:b", ICECC_LOGFILE="/tmp/l",
                ICECC_ENV_COMPRESSION="xz", ICECC_TEST_SOCKET="/s", ICECC_COLOR_DIAGNOSTICS="1",
                ICECC_CARET_WORKAROUND="0", TERM="xterm", GCC_COLORS="x", HOME="/h",
                PATH="/a:/b")  # fmt: skip
        assert (e.version, e.cc, e.cxx, e.preferred_host) == ("", "/opt/cc", "/opt/c++", "big")
        assert (e.extrafiles, e.logfile, e.env_compression) == ("a:b", "/tmp/l", "xz")
        assert (e.test_socket, e.color_diagnostics, e.caret_workaround) == ("/s", "1", "0")
        assert (e.term, e.gcc_colors, e.home, e.path) == ("xterm", "x", "/h", "/a:/b")


class TestSnapshot:
    def test_immutable(self):
        """No field can be set or deleted."""
        e = env(ICECC="no")
        with pytest.raises(AttributeError):
            e.icecc = "disable"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            del e.icecc

    def test_snapshot_does_not_follow_the_mapping(self):
        """Changing the source mapping later changes nothing."""
        source = {"ICECC": "no"}
        e = ClientEnv.from_mapping(source)
        source["ICECC"] = "disable"
        assert e.local_only
        assert e.environ["ICECC"] == "no"

    def test_child_environment_raises_the_guard(self):
        """Programs we start see _ICECC_SAFEGUARD raised by the step, as one digit."""
        e = env(PATH="/bin", _ICECC_SAFEGUARD="1")
        child = e.child_environ(2)
        assert child[SAFEGUARD_VARIABLE] == "3"
        assert child["PATH"] == "/bin"
        assert env().child_environ(1)[SAFEGUARD_VARIABLE] == "1"

    def test_current_reads_the_process_environment(self, monkeypatch):
        """current() is the process environment."""
        monkeypatch.setenv("ICECC_PREFERRED_HOST", "from-os")
        assert ClientEnv.current().preferred_host == "from-os"

    def test_without_os_the_environment_is_what_os_would_read(self):
        """A fresh ``-I -S`` interpreter: read before ``os`` loads, equal to os.environ after.

        Undecodable bytes come back as ``os`` has them (surrogate escapes).
        """
        package = str(Path(__file__).resolve().parents[2])
        probe = (
            f"import sys; sys.path[:0] = [{package!r}]\n"
            "from iceserv.client.env import process_environ\n"
            "early = dict(process_environ()); loaded = 'os' in sys.modules\n"
            "import os, json\n"
            "print(json.dumps([loaded, early == dict(os.environ), sorted(early)]))\n"
        )
        environ = {b"PATH": b"/usr/bin:/bin", b"ICECC_DEBUG": b"debug", b"ODD": b"caf\xe9 \xff"}
        done = subprocess.run([sys.executable, "-I", "-S", "-c", probe], env=environ,
                              capture_output=True, check=True, timeout=60)  # fmt: skip
        loaded, same, names = json.loads(done.stdout)
        assert (loaded, same) == (False, True)
        assert {"PATH", "ICECC_DEBUG", "ODD"} <= set(names)

    def test_repr_names_the_values(self):
        """The repr shows parsed values, not the whole environment."""
        text = repr(env(ICECC="no", UNRELATED_VARIABLE="x"))
        assert "icecc='no'" in text
        assert "UNRELATED_VARIABLE" not in text


class TestLog:
    def test_levels_and_format(self, tmp_path):
        """Lines are 'ICECC[pid] date: text', filtered by level, appended to ICECC_LOGFILE."""
        path = tmp_path / "log"
        log = ClientLog(env(ICECC_DEBUG="warning").debug_level, str(path))
        log.error("bad")
        log.warning("careful")
        log.info("fyi")
        log.debug("noise")
        lines = path.read_text().splitlines()
        assert [line.split(": ", 1)[1] for line in lines] == ["bad", "careful"]
        assert lines[0].startswith("ICECC[")

    def test_default_shows_errors_only(self, capsys):
        """Without ICECC_DEBUG only errors reach stderr."""
        log = ClientLog(env().debug_level)
        log.warning("hidden")
        log.error("shown")
        assert capsys.readouterr().err.endswith(": shown\n")
