"""The telnet commands, pure: parsing and the exact 1.4 texts, against a fake facade."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iceserv.protocol.text import format_text
from iceserv.telnet import commands as telnet_commands
from iceserv.telnet.commands import (
    DONE,
    GOODBYE,
    HELP,
    MUTATING,
    Command,
    JobLines,
    Reply,
    TelnetControl,
    greeting,
    parse,
    render_host,
    render_job,
    run_command,
)
from telnet.fakes import FakeControl, FakeHost, FakeJob


def run(control: FakeControl, line: str) -> Reply:
    return asyncio.run(run_command(control, line))


def texts(control: FakeControl, line: str) -> list[str]:
    reply = run(control, line)
    assert not reply.close
    assert reply.texts[-1] == DONE
    return list(reply.texts[:-1])


def cluster() -> FakeControl:
    """Two hosts: nodeA runs one job; nodeB installs and compiles another; one job queued."""
    wait = FakeJob(1, "WAIT", "nodeA", "nodeA", "d.c")
    comp = FakeJob(2, "COMP", "nodeA", "nodeB", "a/b/c.cpp")
    pend = FakeJob(3, "PEND", "nodeB", "<unknown>", "e.c")
    return FakeControl(
        uptime=7,
        hosts=[
            FakeHost("nodeA", "10.0.0.1", 10245, "x86_64", 1.5, 2, 100, None, [wait]),
            FakeHost("nodeB", "10.0.0.2", 10246, "aarch64", 0.0, 3, 300, 4, [comp]),
        ],
        jobs=[comp, pend, wait],
        total=3,
        internals_texts={"nodeB": "Node Name: nodeB\n  Current kids: 0 (max: 3)\n"},
    )


class TestParse:
    def test_first_word_is_lower_cased_and_arguments_keep_case(self):
        """The command word is lower-cased; the arguments are passed as typed."""
        assert parse("BlockCS NodeA x") == Command("blockcs", ("NodeA", "x"), "BlockCS NodeA x")

    def test_runs_of_spaces_and_tabs_separate_words(self):
        """Leading, trailing and repeated spaces or tabs make no empty words."""
        assert parse(" \tremovecs  a\t\tb  ").args == ("a", "b")
        assert parse(" \tremovecs  a\t\tb  ").name == "removecs"

    def test_empty_and_blank_lines_give_the_empty_command(self):
        """An empty or all-blank line is the command '' without arguments."""
        assert parse("") == Command("", (), "")
        assert parse("  \t ") == Command("", (), "  \t ")

    def test_lower_casing_is_ascii_only(self):
        """Like C tolower(), only A-Z are lowered: a KELVIN SIGN stays and does not make 'k'."""
        assert parse("BLOC\u212acs").name == "bloc\u212acs"

    def test_unicode_spaces_do_not_separate(self):
        """Only space, tab and newline separate words; U+00A0 stays inside an argument."""
        assert parse("removecs a\u00a0b").args == ("a\u00a0b",)


class TestGreeting:
    def test_two_lines_with_the_facade_numbers(self):
        """The banner shows uptime, hosts, jobs and the last job id as 1.4 words it."""
        assert greeting(cluster()) == (
            "200-ICECC 1.4.0: 7s uptime, 2 hosts, 3 jobs in queue (3 total).",
            "200 Use 'help' for help and 'quit' to quit.",
        )

    def test_empty_scheduler(self):
        """A fresh scheduler announces zeros everywhere."""
        assert greeting(FakeControl())[0] == (
            "200-ICECC 1.4.0: 0s uptime, 0 hosts, 0 jobs in queue (0 total)."
        )


class TestRenderJob:
    def test_dump_format(self):
        """A job renders as '<id> <state> sub:<submitter> on:<server> <file>'."""
        assert render_job(FakeJob(12, "COMP", "s", "t", "x/y.cc")) == "12 COMP sub:s on:t x/y.cc"

    def test_queued_job_has_unknown_server(self):
        """A queued job shows the server the facade reports, '<unknown>'."""
        assert render_job(FakeJob(1, "PEND", "s")) == "1 PEND sub:s on:<unknown> a.c"


class TestRenderHost:
    def test_summary_line(self):
        """The host line has nodename, address, platform, speed, jobs and load."""
        assert render_host(FakeHost("n", "1.2.3.4", 99, "armv7l", 0.0, 4, 511)) == [
            " n (1.2.3.4:99) [armv7l] speed=0.00 jobs=0/4 load=511"
        ]

    def test_speed_has_two_decimals(self):
        """The speed is printed with %.2f."""
        assert "speed=0.33 " in render_host(FakeHost("n", speed=1 / 3))[0]
        assert "speed=1234.50 " in render_host(FakeHost("n", speed=1234.5))[0]

    def test_assigned_count_comes_from_the_facade(self):
        """jobs=<assigned>/<max> uses jobs_assigned, not the length of the job list."""
        assert "jobs=5/2 " in render_host(FakeHost("n", extra_assigned=5))[0]

    def test_busy_installing_suffix(self):
        """An installing host gets ' busy installing since <N> s', even for 0 s."""
        assert render_host(FakeHost("n", busy_installing_since=0))[0].endswith(
            " load=0 busy installing since 0 s"
        )
        assert render_host(FakeHost("n", busy_installing_since=42))[0].endswith(
            " busy installing since 42 s"
        )

    def test_jobs_follow_indented_by_three_spaces(self):
        """Each assigned job follows its host as three spaces and the job dump."""
        host = FakeHost("n", jobs=[FakeJob(1, "WAIT", "a", "n"), FakeJob(2, "COMP", "b", "n")])
        assert render_host(host)[1:] == ["   1 WAIT sub:a on:n a.c", "   2 COMP sub:b on:n a.c"]


class TestHelp:
    def test_lists_the_commands_then_done(self):
        """help answers the nine command names in 1.4's order, then '200 done'."""
        assert run(FakeControl(), "help") == Reply((*HELP, DONE))
        assert HELP == (
            "listcs", "listblocks", "listjobs", "removecs", "blockcs", "unblockcs", "internals",
            "help", "quit",
        )  # fmt: skip

    def test_ignores_arguments_and_case(self):
        """'HELP me' is help."""
        assert texts(FakeControl(), "HELP me") == list(HELP)


class TestListcs:
    def test_no_hosts_gives_only_done(self):
        """Without daemons listcs prints nothing but '200 done'."""
        assert texts(FakeControl(), "listcs") == []

    def test_hosts_in_facade_order_each_followed_by_its_jobs(self):
        """Every host line is followed by its jobs, hosts in the order the facade lists them."""
        assert texts(cluster(), "listcs") == [
            " nodeA (10.0.0.1:10245) [x86_64] speed=1.50 jobs=1/2 load=100",
            "   1 WAIT sub:nodeA on:nodeA d.c",
            (
                " nodeB (10.0.0.2:10246) [aarch64] speed=0.00 jobs=1/3 load=300"
                " busy installing since 4 s"
            ),
            "   2 COMP sub:nodeA on:nodeB a/b/c.cpp",
        ]

    def test_upper_case_command_works(self):
        """LISTCS is listcs."""
        assert texts(cluster(), "LISTCS") == texts(cluster(), "listcs")


class TestListjobs:
    def test_every_job_by_id_with_one_space(self):
        """Each known job is one space and its dump, ordered as the facade returns them."""
        assert texts(cluster(), "listjobs") == [
            " 1 WAIT sub:nodeA on:nodeA d.c",
            " 2 COMP sub:nodeA on:nodeB a/b/c.cpp",
            " 3 PEND sub:nodeB on:<unknown> e.c",
        ]

    def test_no_jobs(self):
        """Without jobs listjobs prints only '200 done'."""
        assert texts(FakeControl(), "listjobs") == []
        reply = asyncio.run(run_command(FakeControl(), "listjobs", job_lines=JobLines()))
        assert reply.texts == (DONE,)


def wire(reply: Reply) -> bytes:
    """The bytes the server sends for *reply* (one format_text per text)."""
    return b"".join(format_text(text) for text in reply.texts)


_NAMES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6) | st.sampled_from(
    ("a.c", "trailing\n", "mid\nline", "\n", "", "caf\u00e9.c")
)


class TestJobLines:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(("keep", "change", "drop", "add", "list")),
                              st.integers(0, 30), _NAMES), max_size=50))  # fmt: skip
    @pytest.mark.parametrize("slack", [0, 1024])
    def test_same_bytes_as_rendering_every_job_after_random_changes(self, slack, steps):
        """listjobs through a JobLines cache sends exactly the bytes of one text per job,
        whatever jobs were kept (same object), changed (a new view), dropped or added
        since the last answer, also for file names with newlines (the table of lines
        pruned at every answer, or hardly ever)."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(telnet_commands, "_LINES_SLACK", slack)
            self._random_changes(steps)

    def _random_changes(self, steps: list[tuple[str, int, str]]) -> None:
        control = FakeControl()
        cache = JobLines()
        jobs: dict[int, FakeJob] = {}
        states = ("PEND", "WAIT", "COMP")
        for kind, key, name in steps:
            if kind == "add" or (kind == "change" and key not in jobs):
                jobs[key] = FakeJob(key, "PEND", "sub", "<unknown>", name)
            elif kind == "change":
                old = jobs[key]
                jobs[key] = FakeJob(key, states[(states.index(old.state) + 1) % 3], old.submitter,
                                    f"cs{key}", old.filename)  # fmt: skip
            elif kind == "drop":
                jobs.pop(key, None)
            control.jobs = list(jobs.values())
            cached = asyncio.run(run_command(control, "listjobs", job_lines=cache))
            plain = asyncio.run(run_command(control, "listjobs"))
            assert wire(cached) == wire(plain)
            assert cached.texts[-1] == DONE


class TestListblocks:
    def test_each_name_with_three_spaces(self):
        """Blocked names are listed in order, indented by three spaces."""
        assert texts(FakeControl(blocks=["x", "10.0.0.9"]), "listblocks") == ["   x", "   10.0.0.9"]

    def test_empty_block_list(self):
        """An empty block list prints only '200 done'."""
        assert texts(FakeControl(), "listblocks") == []


class TestRemovecs:
    def test_without_arguments_asks_which_hosts(self):
        """removecs alone answers '401 Sure. But which hosts?' and removes nothing."""
        control = cluster()
        assert texts(control, "removecs") == ["401 Sure. But which hosts?"]
        assert control.calls == []
        assert control.host_count() == 2

    def test_reports_each_matching_argument(self):
        """Each argument that matched a host gets 'removing host <arg>'; others print nothing."""
        control = cluster()
        assert texts(control, "removecs nosuch 10.0.0.2") == ["removing host 10.0.0.2"]
        assert [h.nodename for h in control.hosts] == ["nodeA"]

    def test_passes_arguments_in_order_and_case(self):
        """The facade gets every argument as typed, in order, duplicates included."""
        control = cluster()
        assert texts(control, "REMOVECS nodeA NODEA nodeA") == ["removing host nodeA"]
        assert control.calls == [("remove_hosts", ["nodeA", "NODEA", "nodeA"])]


class TestBlockcs:
    def test_without_arguments_asks_which_hosts(self):
        """blockcs alone answers '401 Sure. But which hosts?' and blocks nothing."""
        control = cluster()
        assert texts(control, "blockcs") == ["401 Sure. But which hosts?"]
        assert control.blocks == []

    def test_blocks_every_argument_and_reports_removals(self):
        """Every argument is blocked; those that matched a host are reported as removed."""
        control = cluster()
        assert texts(control, "blockcs x nodeB") == ["removing host nodeB"]
        assert control.calls == [("block_hosts", ["x", "nodeB"])]
        assert control.blocks == ["x", "nodeB"]


class TestUnblockcs:
    def test_without_arguments_asks_which_host(self):
        """unblockcs alone answers '401 Sure. But which host?' (singular, as in 1.4)."""
        assert texts(FakeControl(blocks=["x"]), "unblockcs") == ["401 Sure. But which host?"]

    def test_unblocks_silently(self):
        """unblockcs prints nothing but '200 done' and passes its arguments on."""
        control = FakeControl(blocks=["x", "y"])
        assert texts(control, "unblockcs y nosuch") == []
        assert control.calls == [("unblock_hosts", ["y", "nosuch"])]
        assert control.blocks == ["x"]


class TestInternals:
    def test_every_host_verbatim_or_not_reporting(self):
        """Each daemon's text is passed on unchanged; a silent one is '<node> not reporting'."""
        assert texts(cluster(), "internals") == [
            "nodeA not reporting\n",
            "Node Name: nodeB\n  Current kids: 0 (max: 3)\n",
        ]

    def test_arguments_select_hosts(self):
        """The arguments go to the facade, which answers only for matching hosts."""
        control = cluster()
        assert texts(control, "internals 10.0.0.2") == [
            "Node Name: nodeB\n  Current kids: 0 (max: 3)\n"
        ]
        assert control.calls == [("internals", ["10.0.0.2"])]

    def test_no_match_gives_only_done(self):
        """internals for an unknown host prints only '200 done'."""
        assert texts(cluster(), "internals nosuch") == []


class TestQuit:
    @pytest.mark.parametrize("line", ["quit", "exit", "QUIT", "Exit now", "  quit"])
    def test_says_good_bye_and_closes_without_done(self, line):
        """quit and exit (any case, any arguments) answer '200 Good Bye!' and end the session."""
        assert run(FakeControl(), line) == Reply((GOODBYE,), close=True)
        assert GOODBYE == "200 Good Bye!"


class TestInvalidCommand:
    def test_echoes_the_whole_line(self):
        """An unknown command echoes the line as typed, arguments and case included."""
        assert texts(FakeControl(), "FOO bar") == ["Invalid command 'FOO bar'"]

    def test_empty_line(self):
        """An empty line is the invalid command ''."""
        assert texts(FakeControl(), "") == ["Invalid command ''"]

    def test_blanks_are_kept_in_the_echo(self):
        """The echo is the raw line, leading and trailing spaces included."""
        assert texts(FakeControl(), "  crashme  ") == ["Invalid command '  crashme  '"]

    def test_prefix_of_a_command_is_invalid(self):
        """Only whole words match: 'listcsx' and 'list' are invalid."""
        assert texts(cluster(), "listcsx") == ["Invalid command 'listcsx'"]
        assert texts(cluster(), "list") == ["Invalid command 'list'"]

    def test_undecodable_bytes_are_echoed_as_received(self):
        """A line decoded with surrogateescape is echoed with the same escapes."""
        assert texts(FakeControl(), "\udcff\udcfe") == ["Invalid command '\udcff\udcfe'"]


class TestControlPolicy:
    """Issue 14 item 5: a denied session's changing commands are answered, never run."""

    @pytest.mark.parametrize("name", ["removecs", "blockcs", "unblockcs", "BlockCS"])
    @pytest.mark.parametrize("policy", list(TelnetControl))
    def test_a_denied_changing_command_is_refused_in_one_line(self, name, policy):
        """Each changing command gets one 403 line and 200 done; the facade is not called."""
        ctrl = cluster()
        reply = asyncio.run(run_command(ctrl, f"{name} nodeA", refuse_with=policy))
        assert reply.texts == (policy.refusal(name.lower()), DONE)
        assert reply.texts[0].startswith("403 ")
        assert "\n" not in reply.texts[0]
        assert reply.refused == name.lower()
        assert not reply.close
        assert ctrl.calls == []

    def test_the_two_refusal_texts(self):
        """local names the scheduler's host; off says the command is disabled."""
        assert TelnetControl.LOCAL.refusal("blockcs") == (
            "403 blockcs is allowed only from the scheduler's host."
        )
        assert (
            TelnetControl.OFF.refusal("removecs") == "403 removecs is disabled on this scheduler."
        )

    @pytest.mark.parametrize(
        "line", ["listcs", "listblocks", "listjobs", "help", "crashme", "bogus x", "", "internals"]
    )
    def test_read_only_and_unknown_lines_are_unchanged_when_denied(self, line):
        """A denied session gets 1.4's exact answer to everything that changes nothing."""
        allowed = asyncio.run(run_command(cluster(), line))
        denied = asyncio.run(run_command(cluster(), line, refuse_with=TelnetControl.OFF))
        assert denied == allowed
        assert denied.refused == ""

    def test_quit_still_closes(self):
        """quit is not a changing command: it says good bye and closes."""
        reply = asyncio.run(run_command(cluster(), "quit", refuse_with=TelnetControl.LOCAL))
        assert reply == Reply(texts=(GOODBYE,), close=True)

    def test_mutating_is_exactly_the_changing_commands(self):
        """The refused set is blockcs, unblockcs and removecs; every one is in help."""
        assert frozenset({"removecs", "blockcs", "unblockcs"}) == MUTATING
        assert set(HELP) >= MUTATING
