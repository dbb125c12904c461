"""The build summary: the wrapper's one line per compile, and the report made from a record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from iceserv.client import buildsummary
from iceserv.client.buildsummary import default_record, read_record, recorded, render

ICECC = Path(sys.executable).parent / "icecc"


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def error(self, text: str) -> None:
        self.lines.append(text)

    warning = info = debug = error


class _Run:
    """A wrapper invocation that 'compiles' by saying what 1.4's client says."""

    def __init__(self, argv: list[str], said: list[str], status: int = 0) -> None:
        self.argv, self.diag, self._said, self._status = argv, _Log(), said, status

    def run(self) -> int:
        for text in self._said:
            self.diag.debug(text)
        return self._status


class TestRecorded:
    def test_without_the_variable_nothing_is_written(self, monkeypatch, tmp_path):
        """No ICECC_SUMMARY: the run is passed through untouched."""
        monkeypatch.delenv("ICECC_SUMMARY", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path))
        run = _Run(["gcc", "-c", "a.c"], ["Have to use host 10.0.0.2:10245 - Job ID: 1"])
        diag = run.diag
        assert recorded(run) == 0
        assert run.diag is diag
        assert not list(tmp_path.rglob("*.jsonl"))

    def test_a_remote_and_a_local_compile_are_recorded(self, monkeypatch, tmp_path):
        """One JSON line each: the server's address, or local and why; the log still gets it."""
        record = tmp_path / "r.jsonl"
        monkeypatch.setenv("ICECC_SUMMARY", str(record))
        remote = _Run(["gcc", "-O2", "-c", "src/a.c", "-o", "a.o"],
                      ["Have to use host 10.0.0.2:10245 - Job ID: 4 - env: x86_64"])  # fmt: skip
        assert recorded(remote) == 0
        local = _Run(["gcc", "-c", "b.cpp", "-ob.o"], ["building locally: cannot compile -E"], 1)
        assert recorded(local) == 1
        first, second = read_record(str(record))
        assert (first["src"], first["out"], first["where"]) == ("src/a.c", "a.o", "10.0.0.2")
        assert first["rc"] == 0
        assert (second["src"], second["out"], second["where"]) == ("b.cpp", "b.o", "local")
        assert second["why"] == "building locally: cannot compile -E"
        said = "Have to use host 10.0.0.2:10245 - Job ID: 4 - env: x86_64"
        assert remote.diag._log.lines == [said]

    def test_one_means_the_default_record(self, monkeypatch, tmp_path):
        """ICECC_SUMMARY=1 writes under $XDG_CACHE_HOME/iceserv (made on first use)."""
        monkeypatch.setenv("ICECC_SUMMARY", "1")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        recorded(_Run(["cc", "-c", "x.c"], ["building myself, but telling localhost"]))
        path = Path(default_record(os.environ))
        assert path == tmp_path / "cache" / "iceserv" / "summary.jsonl"
        assert read_record(str(path))[0]["why"] == "the scheduler chose the local host"

    def test_an_unwritable_record_never_fails_the_build(self, monkeypatch, tmp_path):
        """A record that cannot be written is skipped; the compile's status stands."""
        (tmp_path / "file").write_text("")
        monkeypatch.setenv("ICECC_SUMMARY", str(tmp_path / "file" / "sub" / "r.jsonl"))
        assert recorded(_Run(["cc", "-c", "x.c"], [], 3)) == 3

    def test_long_names_keep_the_line_below_pipe_buf(self, monkeypatch, tmp_path):
        """Each line is one write under 4096 bytes, so parallel compiles never interleave."""
        record = tmp_path / "r.jsonl"
        monkeypatch.setenv("ICECC_SUMMARY", str(record))
        argv = ["cc", "-c", "d/" * 5000 + "x.c", "-o", "o" * 9000]
        recorded(_Run(argv, ["no local daemon found"]))
        line = record.read_bytes()
        assert len(line) < 4096
        assert json.loads(line)["why"] == "no local daemon found"


class TestRender:
    def test_report_names_hosts_fallbacks_failures_and_slowest(self):
        """Where jobs ran, local fallbacks by reason, failures and the slowest units."""
        entries: list[dict[str, Any]] = [
            {"t": 0, "dur": 1.0, "src": "a.c", "where": "10.0.0.2", "why": "", "rc": 0},
            {"t": 0, "dur": 3.0, "src": "b.c", "where": "10.0.0.3", "why": "", "rc": 0},
            {"t": 1, "dur": 0.5, "src": "c.c", "where": "local", "why": "no local daemon found",
             "rc": 1},
        ]  # fmt: skip
        text = render(entries, slowest=2)
        assert text.splitlines()[0].startswith("icecc summary: 3 compiles in 3.0 s")
        assert "2 remote, 1 local" in text
        assert "fell back to local: 1" in text
        assert "1  no local daemon found" in text
        assert "failed: 1" in text
        assert text.index("b.c") < text.index("a.c")
        assert "c.c" not in text.partition("slowest")[2]

    def test_empty_record(self):
        """No entries: one line saying so."""
        assert render([]) == "icecc summary: no compiles recorded\n"


class TestIceccSummary:
    def test_wraps_a_build_and_prints_the_report(self, tmp_path):
        """``icecc --summary CMD`` runs CMD with a fresh record and reports at the end."""
        (tmp_path / "a.c").write_text("int a(void) { return 1; }\n")
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "ICECC": "disable"}
        done = subprocess.run([str(ICECC), "--summary", str(ICECC), "gcc", "-c", "a.c"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "icecc summary: 1 compiles" in done.stderr
        assert "a.c  (local)" in done.stderr
        assert not list(Path(buildsummary.__file__).parent.glob("icecc-summary-*"))
