"""Tests of ``iceserv sim`` (iceserv.app.sim) through the CLI entry point."""

from __future__ import annotations

import json

from iceserv.app.cli import main

RECORD = {"submit": 0, "submitter": "dev", "source_size": 1000, "object_size": 5000, "cpu": 1.5,
          "lang": "c", "env": "gcc"}  # fmt: skip
TRACE = "\n".join(json.dumps({**RECORD, "submit": i}) for i in range(10))


class TestSimCommand:
    def test_both_placements(self, tmp_path, capsys):
        """The default run compares both placements and writes the picture and the JSON."""
        trace = tmp_path / "t.jsonl"
        trace.write_text(TRACE)
        svg, out = tmp_path / "t.svg", tmp_path / "t.json"
        code = main(["sim", str(trace), "--host", "a:1:2", "--host", "b:2:4@3",
                     "--svg", str(svg), "--json", str(out), "--make-jobs", "3"])  # fmt: skip
        assert code == 0
        table = capsys.readouterr().out
        assert "iceserv" in table
        assert "icecream 1.4 (model)" in table
        assert svg.read_text().startswith("<svg")
        figures = json.loads(out.read_text())
        assert [r["placement"] for r in figures["results"]] == ["iceserv", "icecream 1.4 (model)"]
        assert all(r["jobs"] == 10 for r in figures["results"])

    def test_cluster_file_and_one_placement(self, tmp_path, capsys):
        """--cluster reads a file; --placement runs just one."""
        trace, cluster = tmp_path / "t.jsonl", tmp_path / "c.json"
        trace.write_text(TRACE)
        cluster.write_text(json.dumps({"hosts": [{"name": "a"}]}))
        assert main(["sim", str(trace), "--cluster", str(cluster), "--placement", "1.4"]) == 0
        assert "iceserv " not in capsys.readouterr().out

    def test_bad_input_is_65(self, tmp_path, capsys):
        """A broken trace, a missing file or no hosts at all exit with EX_DATAERR and a message."""
        trace = tmp_path / "t.jsonl"
        trace.write_text("{}")
        assert main(["sim", str(trace), "--host", "a:1:1"]) == 65
        assert "missing submit" in capsys.readouterr().err
        assert main(["sim", str(tmp_path / "absent"), "--host", "a:1:1"]) == 65
        trace.write_text(TRACE)
        assert main(["sim", str(trace)]) == 65
        assert "--host" in capsys.readouterr().err
