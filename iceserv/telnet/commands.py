r"""The telnet commands of the scheduler: parse a line, render the answer (reference §6).

This module owns the text of the scheduler's telnet interface exactly as
icecream 1.4 writes it (upstream source at tag 1.4, ``scheduler/scheduler.cpp``,
``handle_control_login`` and ``handle_line``): the two-line greeting, every
command, the error texts, the ``200 done`` that ends each answer and the
``200 Good Bye!`` that ends a session.  It asks the scheduler through the
:class:`~iceserv.telnet.facade.SchedulerControl` facade and returns texts; it
must not touch sockets, read a clock, log or import ``iceserv.scheduler``.

Each returned text is one message of the text channel: the server sends it
through :func:`iceserv.protocol.text.format_text`, which adds the ``"\n"``.
A text may span lines (a daemon's ``internals`` dump is passed on verbatim).
"""

from __future__ import annotations

import enum
import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from iceserv.telnet.facade import SchedulerControl, TelnetHost, TelnetJob

    _Handler = Callable[[SchedulerControl, list[str]], list[str]]
    _AsyncHandler = Callable[[SchedulerControl, list[str]], Awaitable[list[str]]]

__all__ = [
    "DONE",
    "GOODBYE",
    "HELP",
    "MUTATING",
    "VERSION",
    "Command",
    "JobLines",
    "Reply",
    "TelnetControl",
    "greeting",
    "parse",
    "render_host",
    "render_job",
    "run_command",
]

#: The version the greeting announces; real 1.4 clients never parse it.
VERSION: Final = "1.4.0"
#: Ends the answer to every command except ``quit``.
DONE: Final = "200 done"
#: Sent before the scheduler closes a session (``quit``, idle time-out, end of input).
GOODBYE: Final = "200 Good Bye!"
#: The commands ``help`` lists, in 1.4's order.
HELP: Final = (
    "listcs",
    "listblocks",
    "listjobs",
    "removecs",
    "blockcs",
    "unblockcs",
    "internals",
    "help",
    "quit",
)

#: The commands that change the scheduler's state (issue 14 item 5).  1.4 also has
#: ``crashme`` (it crashes the scheduler on purpose); iceserv never implemented it:
#: it gets 1.4's ``Invalid command`` answer, so there is nothing to refuse.
MUTATING: Final = frozenset(("removecs", "blockcs", "unblockcs"))

#: Lines of jobs that are gone kept by :class:`JobLines` before its table is pruned.
_LINES_SLACK: Final = 1024
_NO_HOSTS: Final = "401 Sure. But which hosts?"
_NO_HOST: Final = "401 Sure. But which host?"
# 1.4 splits on exactly these; Unicode spaces such as U+00A0 stay inside a word.
_SEPARATORS: Final = re.compile(r"[ \t\n]+")
# 1.4 lower-cases with C tolower(): ASCII only, so U+212A KELVIN SIGN is not a "k".
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class TelnetControl(enum.StrEnum):
    """Who may run the :data:`MUTATING` commands (``[scheduler] telnet_control``)."""

    ANY = "any"  # everyone, as in icecream 1.4
    LOCAL = "local"  # only sessions from the scheduler's own host
    OFF = "off"  # nobody

    def refusal(self, name: str) -> str:
        """Return the one-line answer to *name* when this policy refuses it."""
        if self is TelnetControl.OFF:
            return f"403 {name} is disabled on this scheduler."
        return f"403 {name} is allowed only from the scheduler's host."


@dataclass(frozen=True, slots=True)
class Command:
    """One input line: the lower-cased command word, the arguments and the line as typed."""

    name: str
    args: tuple[str, ...]
    line: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The texts to send for one command, whether the session ends after them.

    ``refused`` names a :data:`MUTATING` command the session may not run ("" otherwise).
    """

    texts: tuple[str, ...]
    close: bool = False
    refused: str = ""


def parse(line: str) -> Command:
    """Split *line* on spaces/tabs; the first word, ASCII lower-cased, is the command.

    Arguments keep their case.  An empty or blank line gives the command ``""``.
    """
    words = [word for word in _SEPARATORS.split(line) if word]
    if not words:
        return Command(name="", args=(), line=line)
    return Command(name=words[0].translate(_ASCII_LOWER), args=tuple(words[1:]), line=line)


def greeting(control: SchedulerControl) -> tuple[str, str]:
    """Return the two lines sent as soon as a session is accepted."""
    status = (
        f"200-ICECC {VERSION}: {control.uptime_seconds()}s uptime, {control.host_count()} hosts, "
        f"{control.job_count()} jobs in queue ({control.total_jobs()} total)."
    )
    return status, "200 Use 'help' for help and 'quit' to quit."


def render_job(job: TelnetJob) -> str:
    """Return 1.4's one-line dump of *job* (without the leading indentation)."""
    return f"{job.id} {job.state} sub:{job.submitter} on:{job.server} {job.filename}"


def render_host(host: TelnetHost) -> list[str]:
    """Return the ``listcs`` lines of *host*: its summary, then one line per assigned job."""
    address = f"[{host.ip}]:{host.port}" if ":" in host.ip else f"{host.ip}:{host.port}"
    line = (
        f" {host.nodename} ({address}) [{host.platform}] speed={host.speed:.2f} "
        f"jobs={host.jobs_assigned}/{host.max_jobs} load={host.load}"
    )
    if host.busy_installing_since is not None:
        line += f" busy installing since {host.busy_installing_since} s"
    return [line, *(f"   {render_job(job)}" for job in host.jobs)]


class JobLines:
    """``listjobs`` answers that render only the jobs whose view changed (issue 19 item 4).

    The control hands out the same view object for a job until its state or
    server changes, so a view that is the one rendered last time has the same
    line; a new view is rendered again.  :meth:`render` returns the whole
    answer as one text, each line ended as :func:`~iceserv.protocol.text.format_text`
    would end it alone, so the bytes on the wire are those of one text per
    job.  One instance serves a whole telnet server; it keeps one line per
    known job and forgets the jobs that are gone at each call.
    """

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: dict[int, tuple[TelnetJob, str]] = {}

    def render(self, jobs: Iterable[TelnetJob]) -> list[str]:
        """Return the answer's texts for *jobs*: one text holding every line, or none.

        The table of lines is updated in place; the lines of jobs that are gone
        are dropped once it holds twice as many as there are jobs (and 1,024 more).
        """
        kept = self._lines
        parts = []
        listed = []
        for job in jobs:
            hit = kept.get(job.id)
            if hit is None or hit[0] is not job:
                line = f" {render_job(job)}"
                hit = kept[job.id] = (job, line if line.endswith("\n") else line + "\n")
            parts.append(hit[1])
            listed.append(job.id)
        if len(kept) > 2 * len(listed) + _LINES_SLACK:
            self._lines = {job_id: kept[job_id] for job_id in listed}
        return ["".join(parts)] if parts else []


def _listcs(control: SchedulerControl, _args: list[str]) -> list[str]:
    return [text for host in control.list_hosts() for text in render_host(host)]


def _listblocks(control: SchedulerControl, _args: list[str]) -> list[str]:
    return [f"   {name}" for name in control.blocked()]


def _listjobs(control: SchedulerControl, _args: list[str]) -> list[str]:
    return [f" {render_job(job)}" for job in control.list_jobs()]


def _removecs(control: SchedulerControl, args: list[str]) -> list[str]:
    if not args:
        return [_NO_HOSTS]
    return [f"removing host {name}" for name in control.remove_hosts(args)]


def _blockcs(control: SchedulerControl, args: list[str]) -> list[str]:
    if not args:
        return [_NO_HOSTS]
    return [f"removing host {name}" for name in control.block_hosts(args)]


def _unblockcs(control: SchedulerControl, args: list[str]) -> list[str]:
    if not args:
        return [_NO_HOST]
    control.unblock_hosts(args)
    return []


def _help(_control: SchedulerControl, _args: list[str]) -> list[str]:
    return list(HELP)


_COMMANDS: Final[dict[str, _Handler]] = {
    "listcs": _listcs,
    "listblocks": _listblocks,
    "listjobs": _listjobs,
    "removecs": _removecs,
    "blockcs": _blockcs,
    "unblockcs": _unblockcs,
    "help": _help,
}


async def _internals(control: SchedulerControl, args: list[str]) -> list[str]:
    return list(await control.internals(args))


_ASYNC_COMMANDS: Final[dict[str, _AsyncHandler]] = {"internals": _internals}


async def run_command(
    control: SchedulerControl,
    line: str,
    *,
    refuse_with: TelnetControl | None = None,
    job_lines: JobLines | None = None,
) -> Reply:
    """Execute one input *line* against *control* and return what to send.

    With *job_lines*, ``listjobs`` reuses the lines of unchanged jobs (the
    same bytes on the wire).

    ``quit`` and ``exit`` answer ``200 Good Bye!`` and close; every other line,
    valid or not, ends with ``200 done``.  With *refuse_with* (the policy that
    denies this session), a :data:`MUTATING` command is not run: it gets
    :meth:`TelnetControl.refusal`, then ``200 done``.
    """
    command = parse(line)
    if command.name in {"quit", "exit"}:
        return Reply(texts=(GOODBYE,), close=True)
    if refuse_with is not None and command.name in MUTATING:
        return Reply(texts=(refuse_with.refusal(command.name), DONE), refused=command.name)
    args = list(command.args)
    if command.name == "listjobs" and job_lines is not None:
        texts = job_lines.render(control.list_jobs())
    elif (handler := _COMMANDS.get(command.name)) is not None:
        texts = handler(control, args)
    elif (async_handler := _ASYNC_COMMANDS.get(command.name)) is not None:
        texts = await async_handler(control, args)
    else:
        texts = [f"Invalid command '{command.line}'"]
    return Reply(texts=(*texts, DONE))
