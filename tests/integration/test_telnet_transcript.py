"""Telnet transcripts: the real 1.4 scheduler against iceserv, line by line.

One script of telnet commands and cluster actions is played three times:

* against the real ``icecc-scheduler`` (``RealScheduler`` from the test bed),
  with daemons logged in through our codec (``BlockingChannel``);
* against iceserv's ``TelnetServer`` backed by ``FakeControl``, whose state each
  action changes the way 1.4 changed the real one (this isolates the telnet
  layer: parsing, line rules and rendering);
* against iceserv's own scheduler program (``python -m iceserv.app.scheduler``)
  with the same daemons logged in the same way.

Every received byte is recorded; the transcripts must be equal once the
uptime and the install time are masked.  Nothing else is masked: the speed
of an unrated host (0.00) and the loads sent in STATS must match as they are.
Where a scheduler does not do what 1.4 did (another message to a daemon, a
job state never reached), the transcript gets a ``!!!`` line and play goes on,
so one diff shows every difference.

Four scripts: an empty scheduler (every command and error text, line
endings); the cluster below; a daemon that does not answer ``internals``
(``<node> not reporting``); and a line with bytes >= 0x80, where 1.4 differs
from reference §1.7 (the fake-facade run is an expected failure).

The cluster is built so that 1.4 has exactly one choice at every step (nodeA
compiles nothing, nodeB is the only server), so the job states are part of
the comparison: nodeB installs an environment for job 1 (WAIT, then COMP),
job 2 waits in the queue while nodeB installs (PEND), nodeB's re-login with
the environment frees it (job 2 WAIT), job 3 fills its preload slot and job 4
stays queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import pytest
from telnet.fakes import FakeControl, FakeHost, FakeJob
from testbed import OurScheduler, RealScheduler, WaitTimeoutError, wait_for

from iceserv.protocol import (
    ICESERV_MARK,
    ConfCS,
    EnvEntry,
    GetCS,
    GetInternalStatus,
    JobBegin,
    Login,
    Message,
    NoCS,
    Stats,
    StatusText,
    UseCS,
    records,
)
from iceserv.protocol.records import replace
from iceserv.telnet import TelnetServer, serve_telnet
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager

pytestmark = pytest.mark.live

STEP_TIMEOUT = 15.0  # bound of every telnet read and connect (internals may take 10 s)
EXPECT_TIMEOUT = 3.0  # bound of a daemon's wait for a scheduler message or state
ENV_X = (EnvEntry("x86_64", "envX"),)
NODE_A_INTERNALS = "Node Name: nodeA\n  Remote name: 127.0.0.1\n  Current kids: 0 (max: 0)\n"
NODE_B_INTERNALS = "Node Name: nodeB"  # no newline: the scheduler must add one
_MASKS = (
    (re.compile(rb"\d+s uptime"), b"<N>s uptime"),
    (re.compile(rb"busy installing since \d+ s"), b"busy installing since <N> s"),
)


# --- the script -------------------------------------------------------------------------


def _marked(got: object, msg: Message) -> bool:
    """Our scheduler's CS_CONF marks it as iceserv in ``bench_source`` (1.4 reads and drops it)."""
    return (
        isinstance(msg, ConfCS)
        and isinstance(got, ConfCS)
        and got.bench_source.startswith(ICESERV_MARK)
        and got == replace(msg, bench_source=got.bench_source)
    )


@dataclass(frozen=True)
class Send:
    """Send *data* on the current session; read *answers* replies (0: read to EOF)."""

    data: bytes
    answers: int = 1
    internals_from: tuple[str, ...] = ()  # daemons that must answer GET_INTERNALS, in order
    silent: tuple[str, ...] = ()  # of those, the ones that answer STATS instead


@dataclass(frozen=True)
class Act:
    """Change the cluster: *drive* on a real one, *model* on the fake facade."""

    name: str
    drive: Callable[[Cluster], None]
    model: Callable[[FakeControl], None]


@dataclass(frozen=True)
class NewSession:
    """Close the current telnet session (if any) and open one; record its greeting."""


Step = Send | Act | NewSession


def _cmds(*lines: str) -> list[Step]:
    return [Send(line.encode() + b"\n") for line in lines]


@dataclass(frozen=True)
class ClusterScenario:
    """The daemons' side of ``cluster_script``: what they do, and the same change as data.

    nodeA and nodeB announce *port_a* and *port_b*, where the test listens, so
    a scheduler that checks the compile ports finds them reachable.
    """

    port_a: int
    port_b: int

    @property
    def login_a(self) -> Login:
        return Login(
            port=self.port_a,
            max_kids=0,
            nodename="nodeA",
            host_platform="x86_64",
            noremote=True,
            supported_features=3,
        )

    @property
    def login_b(self) -> Login:
        return Login(
            port=self.port_b,
            max_kids=2,
            nodename="nodeB",
            host_platform="x86_64",
            chroot_possible=True,
            supported_features=3,
        )

    def use_b(self, job_id: int, *, got_env: bool) -> UseCS:
        return UseCS(
            job_id=job_id,
            port=self.port_b,
            hostname="127.0.0.1",
            host_platform="x86_64",
            got_env=got_env,
            client_id=100 + job_id,
        )

    @staticmethod
    def submit(c: Cluster, job_id: int, filename: str) -> None:
        c.send(
            "nodeA",
            GetCS(
                versions=ENV_X, filename=filename, lang=0, target="x86_64", client_id=100 + job_id
            ),
        )

    def login_both(self, c: Cluster) -> None:
        c.login("nodeA", self.login_a, load=100)
        c.login("nodeB", self.login_b, load=300)

    def model_login_both(self, f: FakeControl) -> None:
        f.hosts.append(FakeHost("nodeA", "127.0.0.1", self.port_a, "x86_64", 0.0, 0, 100))
        f.hosts.append(FakeHost("nodeB", "127.0.0.1", self.port_b, "x86_64", 0.0, 2, 300))

    def job1_installs(self, c: Cluster) -> None:
        self.submit(c, 1, "a/b/c.cpp")
        c.expect("nodeA", self.use_b(1, got_env=False))

    @staticmethod
    def model_job1_installs(f: FakeControl) -> None:
        job = FakeJob(1, "WAIT", "nodeA", "nodeB", "a/b/c.cpp")
        f.jobs.append(job)
        f.hosts[1].jobs.append(job)
        f.hosts[1].busy_installing_since = 0
        f.total = 1

    def job1_begins_job2_queued(self, c: Cluster) -> None:
        c.send("nodeB", JobBegin(job_id=1, stime=int(time.time()), client_count=1))
        c.settle("listjobs", " 1 COMP sub:nodeA on:nodeB a/b/c.cpp")
        self.submit(c, 2, "d.c")
        c.settle("listjobs", " 2 PEND sub:nodeA on:<unknown> d.c")

    @staticmethod
    def model_job1_begins_job2_queued(f: FakeControl) -> None:
        _renew(f, 0, state="COMP")
        f.jobs.append(FakeJob(2, "PEND", "nodeA", "<unknown>", "d.c"))
        f.total = 2

    def b_installed(self, c: Cluster) -> None:
        c.send("nodeB", records.replace(self.login_b, envs=ENV_X))
        c.expect("nodeB", ConfCS())
        c.expect("nodeA", self.use_b(2, got_env=True))
        self.submit(c, 3, "e.c")
        c.expect("nodeA", self.use_b(3, got_env=True))
        self.submit(c, 4, "f.c")
        c.settle("listjobs", " 4 PEND sub:nodeA on:<unknown> f.c")

    @staticmethod
    def model_b_installed(f: FakeControl) -> None:
        node_b = f.hosts[1]
        node_b.busy_installing_since = None
        node_b.jobs.append(_renew(f, 1, state="WAIT", server="nodeB"))
        job3 = FakeJob(3, "WAIT", "nodeA", "nodeB", "e.c")
        node_b.jobs.append(job3)
        f.jobs += [job3, FakeJob(4, "PEND", "nodeA", "<unknown>", "f.c")]
        f.total = 4

    @staticmethod
    def job4_to_submitter(c: Cluster) -> None:
        # With nodeB gone 1.4 tells nodeA to compile job 4 itself, despite max_kids=0.
        c.expect("nodeA", NoCS(job_id=4, client_id=104))
        c.settle("listjobs", " 4 WAIT sub:nodeA on:nodeA f.c")

    @staticmethod
    def model_job4_to_submitter(f: FakeControl) -> None:
        f.hosts[0].jobs.append(_renew(f, len(f.jobs) - 1, state="WAIT", server="nodeA"))


def _renew(f: FakeControl, index: int, **changes: str) -> FakeJob:
    """Replace job *index* by a changed copy, also in its server's list, and return it.

    A job view never changes once handed out (the facade's contract, which the
    telnet server's cache of ``listjobs`` lines relies on): a changed job is a new object.
    """
    old = f.jobs[index]
    new = dataclasses.replace(old, **changes)
    f.jobs[index] = new
    for host in f.hosts:
        host.jobs[:] = [new if job is old else job for job in host.jobs]
    return new


EMPTY_CLUSTER_SCRIPT: list[Step] = [
    NewSession(),
    *_cmds(
        "help",
        "listcs",
        "listjobs",
        "listblocks",
        "blockcs x y",
        "listblocks",
        "unblockcs x",
        "listblocks",
        "unblockcs y nosuch",
        "removecs",
        "blockcs",
        "unblockcs",
        "removecs x",
        "FOO bar",
        "",
        "LISTCS",
        "  listjobs  ",
        "crashme",
        "internals",
        "internals nosuch",
        "Help",
    ),
    Send(b"help\tx\n", answers=2),
    Send(b"listblocks\r\nlistjobs\r\n", answers=2),
    Send(b"listcs\0"),
    Send(b"quit\nhelp\n", answers=0),
]


def cluster_script(sc: ClusterScenario) -> list[Step]:
    """Two daemons, four jobs in every state, then the hosts removed and blocked."""
    return [
        Act("nodeA and nodeB log in", sc.login_both, sc.model_login_both),
        NewSession(),
        *_cmds("listcs", "listjobs"),
        Act("job 1 goes to nodeB, which installs", sc.job1_installs, sc.model_job1_installs),
        *_cmds("listcs", "listjobs"),
        Act(
            "job 1 compiles, job 2 is queued",
            sc.job1_begins_job2_queued,
            sc.model_job1_begins_job2_queued,
        ),
        *_cmds("listcs", "listjobs"),
        Act(
            "nodeB has the env; jobs 2, 3 to nodeB, 4 queued", sc.b_installed, sc.model_b_installed
        ),
        NewSession(),
        *_cmds("listcs", "listjobs"),
        Send(b"internals nodeB\n", internals_from=("nodeB",)),
        Send(b"INTERNALS 127.0.0.1\n", internals_from=("nodeA", "nodeB")),
        *_cmds(
            "internals nosuch",
            "blockcs nosuch 10.9.9.9",
            "listblocks",
            "unblockcs 10.9.9.9",
            "listblocks",
            "removecs nodeB nodeB 127.0.0.2",
        ),
        Act("job 4 goes to its submitter nodeA", sc.job4_to_submitter, sc.model_job4_to_submitter),
        Send(b"listcs\r\n"),
        *_cmds("listjobs", "blockcs nodeA", "listblocks", "listcs", "listjobs"),
        NewSession(),
        *_cmds("listcs"),
        Send(b"exit\n", answers=0),
    ]


def silent_daemon_script(sc: ClusterScenario) -> list[Step]:
    """nodeA answers GET_INTERNALS with STATS: 1.4 prints 'nodeA not reporting' at once."""
    return [
        Act("nodeA and nodeB log in", sc.login_both, sc.model_login_both),
        NewSession(),
        Send(b"internals\n", internals_from=("nodeA", "nodeB"), silent=("nodeA",)),
        *_cmds("listcs"),
        Send(b"quit\n", answers=0),
    ]


# 1.4 reads the text channel through a signed char, so every byte >= 0x80 ends a line
# like a control byte (services/comm.cpp at tag 1.4); iceserv follows reference §1.7.
HIGH_BYTES_SCRIPT: list[Step] = [NewSession(), Send(b"caf\xc3\xa9 x\nquit\n", answers=0)]


# --- recording --------------------------------------------------------------------------


class Session:
    """A telnet session on a blocking socket that records what it receives."""

    def __init__(self, address: tuple[str, int], wake: Callable[[], object]) -> None:
        self.sock = socket.create_connection(address, timeout=STEP_TIMEOUT)
        self.buffer = b""
        self.wake = wake
        self.greeting = self._read(lambda b: b.count(b"\n") >= 2 and b.endswith(b"\n"))

    def _read(self, complete: Callable[[bytes], bool], *, eof: bool = False) -> bytes:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not complete(self.buffer):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"telnet: incomplete answer after {STEP_TIMEOUT} s: {self.buffer!r}"
                raise TimeoutError(msg)
            self.sock.settimeout(min(0.3, remaining))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                self.wake()  # the real scheduler may sit on our accept (reference 7.9)
                continue
            if not chunk:
                if eof:
                    break
                msg = f"telnet: closed by the scheduler after {self.buffer!r}"
                raise ConnectionError(msg)
            self.buffer += chunk
        data, self.buffer = self.buffer, b""
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answers(self, count: int) -> bytes:
        """Read until *count* lines '200 done' arrived (0: until EOF)."""
        if count == 0:
            return self._read(lambda _b: False, eof=True)
        return self._read(
            lambda b: b.endswith(b"\n") and b.split(b"\n").count(b"200 done") >= count
        )

    def close(self) -> None:
        self.sock.close()


def mask(data: bytes) -> bytes:
    for pattern, replacement in _MASKS:
        data = pattern.sub(replacement, data)
    return data


def lines_of(prefix: str, data: bytes) -> list[str]:
    """One transcript entry per received line, exact bytes visible (repr without b'')."""
    return [f"{prefix}{repr(line)[2:-1]}" for line in mask(data).split(b"\n")]


class Driver(Protocol):
    """What ``record`` needs from a target."""

    def open_session(self) -> Session: ...
    def act(self, step: Act) -> list[str]: ...
    def exchange(self, session: Session, step: Send) -> list[str]:
        """Send *step* on *session*, play the daemons' part; return notes and the answer."""
        ...


def record(script: list[Step], driver: Driver) -> list[str]:
    """Play *script* on *driver*; return the transcript (sent and received, masked)."""
    transcript: list[str] = []
    session: Session | None = None
    try:
        for step in script:
            if isinstance(step, NewSession):
                if session is not None:
                    session.close()
                session = driver.open_session()
                transcript += ["=== new session", *lines_of("< ", session.greeting)]
            elif isinstance(step, Act):
                transcript += [f"=== {step.name}", *driver.act(step)]
            else:
                assert session is not None
                transcript.append(f"> {repr(step.data)[2:-1]}")
                transcript += driver.exchange(session, step)
    finally:
        if session is not None:
            session.close()
    return transcript


# --- the cluster of protocol-level daemons ------------------------------------------------


class ClusterTarget(Protocol):
    """A scheduler program our daemons log in to."""

    binary_address: tuple[str, int]
    telnet_address: tuple[str, int]
    names_loopback: bool  # says ``localhost`` for another server at 127.0.0.1

    def waking(self) -> AbstractContextManager[object]: ...
    def wake(self) -> object: ...
    def probe(self, command: str) -> list[str]: ...


@dataclass
class Cluster:
    """Daemons played by ``BlockingChannel``s against one scheduler program."""

    target: ClusterTarget
    daemons: dict[str, BlockingChannel] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # where the scheduler did not act as 1.4

    def login(self, name: str, login: Login, *, load: int) -> None:
        with self.target.waking():  # the real scheduler delays accepts (reference 7.9)
            channel = BlockingChannel.connect(*self.target.binary_address, timeout=STEP_TIMEOUT)
        self.daemons[name] = channel
        channel.send(login, Stats(load=load, load_avg1=load, free_mem=2048))
        self.expect(name, ConfCS())
        self.settle("listcs", f" {name} (")

    def send(self, name: str, msg: Message) -> None:
        self.daemons[name].send(msg)

    def expect(self, name: str, msg: Message) -> None:
        """Receive one message on *name*; note it unless it is *msg*."""
        channel = self.daemons[name]
        channel.sock.settimeout(EXPECT_TIMEOUT)
        try:
            got: object = channel.receive()
        except TimeoutError:
            got = "nothing"
        if got != msg and not self._named_loopback(got, msg) and not _marked(got, msg):
            self.notes.append(f"!!! {name} got {got!r}, 1.4 sends {msg!r}")

    def _named_loopback(self, got: object, msg: Message) -> bool:
        """Our scheduler's one deliberate difference: another server at 127.0.0.1 is ``localhost``.

        1.4 clients read a USE_CS to 127.0.0.1 as "compile it yourself", so 1.4's own
        one-host cluster compiles nothing remotely (issue 13; ``scheduler/jobs.py``).
        """
        return (
            self.target.names_loopback
            and isinstance(msg, UseCS)
            and msg.hostname == "127.0.0.1"
            and got == replace(msg, hostname="localhost")
        )

    def settle(self, command: str, prefix: str) -> None:
        """Wait until a line of *command*'s output starts with *prefix*; note if it never does."""
        try:
            wait_for(
                lambda: any(line.startswith(prefix) for line in self.target.probe(command)),
                EXPECT_TIMEOUT,
                f"{prefix!r} in {command}",
            )
        except WaitTimeoutError:
            self.notes.append(f"!!! {command} never showed {prefix!r}")

    def take_notes(self) -> list[str]:
        notes, self.notes = self.notes, []
        return notes

    def close(self) -> None:
        for channel in self.daemons.values():
            channel.close()


@dataclass
class ClusterDriver:
    """Plays a script against a scheduler program with protocol-level daemons."""

    cluster: Cluster

    def open_session(self) -> Session:
        return Session(self.cluster.target.telnet_address, self.cluster.target.wake)

    def act(self, step: Act) -> list[str]:
        step.drive(self.cluster)
        return self.cluster.take_notes()

    def exchange(self, session: Session, step: Send) -> list[str]:
        session.send(step.data)
        for name in step.internals_from:
            self.cluster.expect(name, GetInternalStatus())
            text = NODE_A_INTERNALS if name == "nodeA" else NODE_B_INTERNALS
            answer = Stats(load=100) if name in step.silent else StatusText(text=text)
            self.cluster.send(name, answer)
        notes = self.cluster.take_notes()
        return notes + lines_of("< ", session.answers(step.answers))


@dataclass
class RealTarget:
    """The real icecc-scheduler from the test bed."""

    names_loopback = False

    scheduler: RealScheduler

    @property
    def binary_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.scheduler.port or 0

    @property
    def telnet_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.scheduler.telnet_port

    def waking(self) -> AbstractContextManager[object]:
        return self.scheduler.awake()

    def wake(self) -> object:
        return self.scheduler.poke(timeout=0.2)

    def probe(self, command: str) -> list[str]:
        return self.scheduler.telnet(command)


@dataclass
class OurTarget:
    """iceserv's scheduler program, started as a user would."""

    names_loopback = True  # USE_CS says localhost for another server at 127.0.0.1
    port: int
    proc: subprocess.Popen[bytes]
    probe_session: Session | None = None

    @property
    def binary_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    @property
    def telnet_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port + 1

    def waking(self) -> AbstractContextManager[object]:
        return contextlib.nullcontext()

    def wake(self) -> object:
        return None

    def probe(self, command: str) -> list[str]:
        if self.probe_session is None:
            self.probe_session = Session(self.telnet_address, self.wake)
        self.probe_session.send(command.encode() + b"\n")
        return self.probe_session.answers(1).decode().splitlines()[:-1]


@contextlib.contextmanager
def our_scheduler() -> Iterator[OurTarget]:
    scheduler = OurScheduler().start()
    target = OurTarget(scheduler.port or 0, scheduler.proc)  # type: ignore[arg-type]
    try:
        yield target
    finally:
        if target.probe_session is not None:
            target.probe_session.close()
        scheduler.stop()


# --- the fake facade behind our telnet server ---------------------------------------------


@dataclass
class FakeDriver:
    """Plays a script against iceserv's TelnetServer over FakeControl."""

    address: tuple[str, int]
    control: FakeControl

    def open_session(self) -> Session:
        return Session(self.address, lambda: None)

    def act(self, step: Act) -> list[str]:
        step.model(self.control)
        return []

    def exchange(self, session: Session, step: Send) -> list[str]:
        texts = {"nodeA": NODE_A_INTERNALS, "nodeB": NODE_B_INTERNALS}
        self.control.internals_texts = {k: v for k, v in texts.items() if k not in step.silent}
        session.send(step.data)
        return lines_of("< ", session.answers(step.answers))


@contextlib.contextmanager
def fake_server(control: FakeControl) -> Iterator[tuple[str, int]]:
    """Run a TelnetServer over *control* in a thread's event loop; yield its address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-telnet", daemon=True)
    thread.start()
    server: TelnetServer = asyncio.run_coroutine_threadsafe(
        serve_telnet(control, "127.0.0.1", 0), loop
    ).result(STEP_TIMEOUT)
    try:
        yield server.address
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(STEP_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STEP_TIMEOUT)
        loop.close()


def fake_transcript(script: list[Step]) -> list[str]:
    control = FakeControl(uptime=3)
    with fake_server(control) as address:
        return record(script, FakeDriver(address, control))


def cluster_transcript(script: list[Step], target: ClusterTarget) -> list[str]:
    cluster = Cluster(target)
    try:
        return record(script, ClusterDriver(cluster))
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def scenario() -> Iterator[ClusterScenario]:
    """Listening compile ports for nodeA and nodeB (nobody answers; connecting works)."""
    with socket.create_server(("127.0.0.1", 0)) as a, socket.create_server(("127.0.0.1", 0)) as b:
        yield ClusterScenario(a.getsockname()[1], b.getsockname()[1])


@pytest.fixture(scope="module")
def scripts(scenario: ClusterScenario) -> dict[str, list[Step]]:
    return {
        "empty": EMPTY_CLUSTER_SCRIPT,
        "cluster": cluster_script(scenario),
        "silent": silent_daemon_script(scenario),
        "high_bytes": HIGH_BYTES_SCRIPT,
    }


@pytest.fixture(scope="module")
def real_transcripts(scripts: dict[str, list[Step]]) -> dict[str, list[str]]:
    """The real scheduler's transcript of each script, recorded once."""
    out = {}
    for name, script in scripts.items():
        with RealScheduler() as scheduler:
            out[name] = cluster_transcript(script, RealTarget(scheduler))
    return out


def assert_same(ours: list[str], real: list[str]) -> None:
    """Fail with a unified diff of the transcripts (real first) unless they are equal."""
    if ours != real:
        diff = difflib.unified_diff(real, ours, "real icecc-scheduler", "iceserv", lineterm="")
        pytest.fail("transcripts differ:\n" + "\n".join(diff), pytrace=False)


class TestTelnetTranscript:
    @pytest.mark.parametrize("name", ["empty", "cluster", "silent", "high_bytes"])
    def test_real_scheduler_behaves_as_the_script_expects(self, real_transcripts, name):
        """1.4 greets each session, ends with '200 Good Bye!' and does what every action expects."""
        transcript = real_transcripts[name]
        assert transcript.count("< 200 Use 'help' for help and 'quit' to quit.") == (
            transcript.count("=== new session")
        )
        assert transcript[-2:] == ["< 200 Good Bye!", "< "]
        assert not [line for line in transcript if line.startswith("!!!")]

    def test_real_scheduler_ends_lines_at_high_bytes(self, real_transcripts):
        """1.4 splits 'caf\\xc3\\xa9 x' into the commands 'caf' and ' x', unlike reference §1.7."""
        assert real_transcripts["high_bytes"][-7:] == [
            "> caf\\xc3\\xa9 x\\nquit\\n",
            "< Invalid command 'caf'",
            "< 200 done",
            "< Invalid command ' x'",
            "< 200 done",
            "< 200 Good Bye!",
            "< ",
        ]

    @pytest.mark.parametrize("name", ["empty", "cluster", "silent", "high_bytes"])
    def test_telnet_server_over_fake_facade(self, real_transcripts, scripts, name):
        """iceserv's telnet server over a facade in the same state answers byte for byte alike."""
        assert_same(fake_transcript(scripts[name]), real_transcripts[name])

    @pytest.mark.parametrize("name", ["empty", "cluster", "silent", "high_bytes"])
    def test_our_scheduler(self, real_transcripts, scripts, name):
        """iceserv's scheduler with the same daemons gives the real scheduler's transcript."""
        with our_scheduler() as target:
            assert_same(cluster_transcript(scripts[name], target), real_transcripts[name])
