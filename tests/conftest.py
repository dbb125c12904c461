"""Shared fixtures: the real icecream 1.4 programs and the namespace bed (see testbed/).

Tests that use these fixtures are marked ``live`` (and ``netns`` for the
namespace bed) automatically, so ``-m "not live"`` never starts a real
program.  When such a test fails, the log tails of the programs it started
are added to its report.  This file must not import iceserv (the ``our_*``
fixtures run its programs as subprocesses).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import pytest
from testbed import NetnsBed, OurScheduler, RealDaemon, RealScheduler, build_real_env

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from testbed import RealEnv

_LIVE_FIXTURES = frozenset(
    {"real_scheduler", "real_daemon_factory", "real_gcc_env", "netns_hosts", "our_scheduler"}
)
_LOGS: pytest.StashKey[list[tuple[str, Callable[[], str]]]] = pytest.StashKey()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the fixtures they use."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _LIVE_FIXTURES:
            item.add_marker(pytest.mark.live)
        if "netns_hosts" in names:
            item.add_marker(pytest.mark.netns)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Append the log tails of the test's real programs to a failing report."""
    report: pytest.TestReport = yield
    if report.failed and call.when != "teardown":
        for label, tail in item.stash.get(_LOGS, []):
            report.sections.append((f"log of {label}", tail()))
    return report


def _watch_log(request: pytest.FixtureRequest, label: str, tail: Callable[[], str]) -> None:
    request.node.stash.setdefault(_LOGS, []).append((label, tail))


@pytest.fixture
def real_scheduler(request: pytest.FixtureRequest) -> Iterator[RealScheduler]:
    """A started real icecc-scheduler on loopback (free port, unique netname, ``-i lo``)."""
    scheduler = RealScheduler()
    _watch_log(request, "icecc-scheduler", scheduler.log_tail)
    with scheduler:
        yield scheduler


@pytest.fixture
def real_daemon_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., RealDaemon]]:
    """``make(name, scheduler=None, *, wait=True, **RealDaemon options)`` -> a started iceccd.

    ``scheduler`` may be a ``RealScheduler`` or an ``"ip:port"`` string (None:
    discovery).  Every daemon made is stopped at teardown.
    """
    with contextlib.ExitStack() as stack:

        def make(
            name: str, scheduler: RealScheduler | str | None = None, *, wait: bool = True, **options
        ) -> RealDaemon:
            address = scheduler.address if isinstance(scheduler, RealScheduler) else scheduler
            daemon = RealDaemon(name, scheduler=address, **options)
            stack.callback(daemon.stop)
            _watch_log(request, f"iceccd {name}", daemon.log_tail)
            return daemon.start(wait=wait)

        yield make


@pytest.fixture
def netns_hosts() -> Iterator[Callable[[int], NetnsBed]]:
    """``make(n)`` -> a started ``NetnsBed`` of n hosts (``h1, h2 = make(2)``); all torn down."""
    with contextlib.ExitStack() as stack:
        yield lambda count: stack.enter_context(NetnsBed(count))


@pytest.fixture(scope="session")
def real_gcc_env(tmp_path_factory: pytest.TempPathFactory) -> RealEnv:
    """The real icecc-create-env tarball of /usr/bin/gcc (gzip), built once per session."""
    return build_real_env("/usr/bin/gcc", dest_dir=tmp_path_factory.mktemp("real-gcc-env"))


@pytest.fixture
def our_scheduler(request: pytest.FixtureRequest) -> Iterator[OurScheduler]:
    """iceserv's scheduler program on loopback (free port, ``-i lo``, ``ICECC_TESTS=1``).

    It must exit 0 on SIGTERM at teardown.
    """
    scheduler = OurScheduler().start()
    _watch_log(request, "iceserv scheduler", scheduler.log_tail)
    try:
        yield scheduler
    finally:
        tail = scheduler.log_tail()
        code = scheduler.stop()
        assert code == 0, f"our scheduler did not exit cleanly: {code}\n{tail}"
