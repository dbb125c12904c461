"""Tests for the man pages: they render without warnings, are current, and document everything.

Every flag the configuration layer accepts, every conf.d and TOML name,
every ``iceserv`` sub-command option, every ``ICECC_*`` variable the
wrapper reads and every structlog event name the services emit must be
named (in bold) in the scdoc source of the right page.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from iceserv.app.cli import build_parser
from iceserv.config import Service, names_for, usage

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = ("icecc.1", "icecc-create-env.1", "iceserv.1", "iceccd.8", "icecc-scheduler.8",
         "iceserv.toml.5", "iceserv-confd.5")  # fmt: skip
PROGRAM_PAGE = {Service.DAEMON: "iceccd.8", Service.SCHEDULER: "icecc-scheduler.8"}
_LEVELS = frozenset(("debug", "info", "warning", "error", "exception", "critical"))
_EVENT = re.compile(r"[a-z]+(?:_[a-z0-9]+)+")
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
EVENT_SOURCES = {
    "icecc-scheduler.8": ("iceserv/scheduler", "iceserv/telnet", "iceserv/app/scheduler.py",
                          "iceserv/service", "iceserv/netio"),
    "iceccd.8": ("iceserv/daemon", "iceserv/app/daemon.py", "iceserv/app/daemon_bus.py",
                 "iceserv/service", "iceserv/netio"),
}  # fmt: skip


def _source(page):
    return (MAN / f"{page}.scd").read_text()


def _bold(page):
    """Every *bold* word of *page*'s scdoc source."""
    return set(re.findall(r"\*([^*\s][^*]*?)\*", _source(page)))


def _tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bin/setup installs it)")
    return path


class TestRendering:
    @pytest.mark.parametrize("page", PAGES)
    def test_groff_has_no_warnings(self, page):
        """groff -man -Tutf8 -ww renders the page without a single warning."""
        proc = subprocess.run([_tool("groff"), "-man", "-Tutf8", "-ww", "-z", str(MAN / page)],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert (proc.returncode, proc.stderr) == (0, "")

    @pytest.mark.parametrize("page", PAGES)
    def test_man_has_no_warnings(self, page):
        """man --warnings (which exits 0 even when it warns) prints nothing on stderr."""
        env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80")
        proc = subprocess.run(
            [_tool("man"), "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(MAN / page)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert (proc.returncode, proc.stderr) == (0, "")

    def test_generated_pages_are_current(self, tmp_path):
        """man/build.sh (scdoc) reproduces the committed roff byte for byte."""
        _tool("scdoc")
        for path in MAN.iterdir():
            if path.suffix == ".scd" or path.name == "build.sh":
                shutil.copy(path, tmp_path / path.name)
        subprocess.run(["sh", str(tmp_path / "build.sh")], timeout=60, check=True)
        for page in PAGES:
            assert (tmp_path / page).read_text() == (MAN / page).read_text(), page

    def test_pages_are_complete(self):
        """Exactly the seven pages exist, each with its source and NAME, SYNOPSIS, SEE ALSO."""
        assert sorted(p.name for p in MAN.glob("*.[1-8]")) == sorted(PAGES)
        for page in PAGES:
            source = _source(page)
            name, section = page.rsplit(".", 1)
            assert source.startswith(f"{name.upper()}({section})")
            for heading in ("# NAME", "# SYNOPSIS", "# SEE ALSO"):
                assert f"\n{heading}\n" in source, (page, heading)

    def test_man_finds_installed_pages(self, tmp_path):
        """After install-system-files, man finds 'iceccd' in section 8 under the prefix."""
        from iceserv.app.cli import main  # noqa: PLC0415

        assert main(["install-system-files", "--root", str(tmp_path), "--init", "systemd"]) == 0
        manpath = str(tmp_path / "usr/local/share/man")
        proc = subprocess.run([_tool("man"), "-M", manpath, "-w", "iceccd"],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert proc.stdout.strip().endswith("man8/iceccd.8"), proc.stderr


def _usage_flags(service):
    flags = set()
    for line in usage(service).splitlines()[3:]:
        flags.update(_FLAG.findall(line.split("  ")[1] if line.startswith("  ") else ""))
    return flags


class TestDocumentsEverything:
    @pytest.mark.parametrize("service", list(Service))
    def test_every_flag(self, service):
        """Every short and long flag of iceccd / icecc-scheduler is in its page."""
        flags = _usage_flags(service)
        assert {"-v", "--confd", "--log-format"} <= flags
        assert flags - _bold(PROGRAM_PAGE[service]) == set()

    def test_every_confd_name(self):
        """Every primary, deprecated and environment name is in iceserv-confd(5)."""
        bold = _bold("iceserv-confd.5")
        for service in Service:
            names = names_for(service)
            wanted = set(names.primary_names()) | set(names.aliases) | set(names.environment)
            wanted |= set(names.unsupported)
            assert wanted - bold == set(), service

    def test_every_toml_key_in_its_table(self):
        """Every field is a key of the right table in iceserv.toml(5)."""
        source = _source("iceserv.toml.5")
        daemon, scheduler = source.split("\n# [daemon]\n")[1].split("\n# [scheduler]\n")
        for service, part in ((Service.DAEMON, daemon), (Service.SCHEDULER, scheduler)):
            keys = set(re.findall(r"(?m)^\*([a-z_]+)\* = ", part))
            assert keys == set(names_for(service).fields), service

    def test_every_iceserv_command_and_option(self):
        """Every sub-command of iceserv and each of its options is in iceserv(1)."""
        bold = " ".join(_bold("iceserv.1"))
        text = _source("iceserv.1")
        missing = []

        def walk(parser, path):
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, sub in action.choices.items():
                        if f"*{' '.join((*path, name))}" not in text and name not in bold:
                            missing.append(" ".join((*path, name)))
                        walk(sub, (*path, name))
                missing.extend(
                    f"{' '.join(path)} {option}"
                    for option in action.option_strings
                    if option not in ("-h", "--help", "--version") and option not in bold
                )

        walk(build_parser(), ())
        assert missing == []

    def test_every_client_variable(self):
        """Every ICECC_* variable the wrapper reads is in icecc(1)."""
        path = ROOT / "iceserv/client/env.py"
        if not path.exists():
            pytest.skip("the client is not there yet")
        names = {
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"ICECC_[A-Z_]+", node.value)
        }  # fmt: skip
        assert names
        assert names - _bold("icecc.1") == set()

    @pytest.mark.parametrize("page", sorted(EVENT_SOURCES))
    def test_every_event(self, page):
        """Every structlog event name the program emits is documented in its page."""
        emitted = {}
        for source in EVENT_SOURCES[page]:
            base = ROOT / source
            files = [base] if base.is_file() else sorted(base.rglob("*.py"))
            for file in files:
                for node in ast.walk(ast.parse(file.read_text())):
                    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                            and node.func.attr in _LEVELS and node.args
                            and isinstance(node.args[0], ast.Constant)
                            and isinstance(node.args[0].value, str)
                            and _EVENT.fullmatch(node.args[0].value)):  # fmt: skip
                        name = node.args[0].value
                        emitted.setdefault(name, f"{file.relative_to(ROOT)}:{node.lineno}")
        assert emitted
        undocumented = {name: where for name, where in emitted.items() if name not in _bold(page)}
        assert undocumented == {}, f"document these events in man/{page}.scd"
