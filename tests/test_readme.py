"""The README's two commands stay true, and CI runs exactly the test command."""

from __future__ import annotations

import re
from pathlib import Path

from iceserv.app.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None, "README must open with a sh code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


class TestReadme:
    def test_opens_with_exactly_two_commands(self):
        """The first code block holds the main-job command and the test command, nothing else."""
        text = (ROOT / "README.md").read_text()
        assert text.index("```sh") < 40, "the commands come first"
        commands = _readme_commands()
        assert len(commands) == 2
        assert all(c.startswith("./bin/setup && ") for c in commands)

    def test_ci_runs_the_readme_test_command(self):
        """.ci/run executes the README's second command verbatim."""
        test_command = _readme_commands()[1]
        script = (ROOT / ".ci" / "run").read_text().splitlines()
        assert test_command in script
        assert (ROOT / ".ci" / "run").stat().st_mode & 0o111

    def test_main_job_is_a_registered_subcommand(self):
        """The main job's iceserv sub-command exists in the CLI."""
        main_job = _readme_commands()[0].split("&&", 1)[1].split()
        assert main_job[0] == ".venv/bin/iceserv"
        parser = build_parser()
        args = parser.parse_args(main_job[1:])
        assert callable(args.func)
