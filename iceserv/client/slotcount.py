"""``icecc --slots [--free]``: how many compile slots the cluster has for this machine's jobs.

Owns the slot count a build tool asks for (``make -j"$(icecc --slots)"``).
It finds the local daemon in 1.4's order (:mod:`iceserv.client.sockets`)
but speaks to it only through the daemon's iceserv-only endpoint
(:mod:`iceserv.protocol.endpoint`): SLOTS_QUERY is a type icecream 1.4 does
not know, and a 1.4 daemon must never receive it.  The daemon asks an
iceserv scheduler, or answers with its own slots and says why.  Without an
iceserv daemon the count is this machine's CPUs.  Whenever the number is
not the cluster's, one line on stderr says so; stdout holds only the number.

Not on the compile path: it may import the protocol.
"""

from __future__ import annotations

import os
import sys

from iceserv.client.channel import Channel, ClusterError
from iceserv.client.sockets import DAEMON_PORT, connect_tcp, connect_unix
from iceserv.protocol import SlotsAnswer, SlotsQuery
from iceserv.protocol.endpoint import iceserv_endpoint, tcp_address

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Sequence
    from typing import Final

    from iceserv.client.env import ClientEnv

__all__ = ["SLOTS_USAGE", "ask_daemon", "slots_command"]

SLOTS_USAGE: Final = "usage: icecc --slots [--free]\n"
#: Seconds for the whole question: the daemon answers within 0.25 s even without the scheduler.
_ANSWER_TIMEOUT: Final = 2.0
_CONNECT_TIMEOUT: Final = 1.0
_SYSTEM_SOCKETS: Final = ("/var/run/icecc/iceccd.socket", "/var/run/iceccd.socket")
_CLUSTER: Final = "cluster"


def _candidates(env: ClientEnv) -> list[str]:
    """Return the daemon addresses 1.4's client tries, in its order (``get_local_daemon``)."""
    if env.test_socket is not None:
        return [env.test_socket]
    paths = list(_SYSTEM_SOCKETS)
    if env.home is not None:
        paths.append(env.home + "/.iceccd.socket")
    return [*paths, tcp_address(DAEMON_PORT)]


def _reachable(address: str) -> bool:
    """Whether some daemon accepts at *address* (the connection is closed unused)."""
    if address.startswith("tcp:"):
        sock = connect_tcp("127.0.0.1", int(address[4:]), _CONNECT_TIMEOUT)
    else:
        sock = connect_unix(address, _CONNECT_TIMEOUT)
    if sock is None:
        return False
    sock.close()
    return True


def ask_daemon(env: ClientEnv) -> tuple[SlotsAnswer | None, str]:
    """Ask the local iceserv daemon; return its answer, or None and why there is none.

    The first address (1.4's order) where an iceserv endpoint or any daemon
    answers decides: a daemon without the endpoint is not iceserv and is
    only connected to and left, never sent a byte.
    """
    for address in _candidates(env):
        sock = connect_unix(iceserv_endpoint(address), _CONNECT_TIMEOUT)
        if sock is not None:
            return _query(sock, address, env)
        if _reachable(address):
            return None, "the local daemon is not iceserv (icecream 1.4?)"
    return None, "no local daemon"


def _query(sock: _socket.socket, address: str, env: ClientEnv) -> tuple[SlotsAnswer | None, str]:
    channel = Channel(sock, name=address, env=env)
    try:
        channel.open()
        channel.send(SlotsQuery())
        answer = channel.receive(_ANSWER_TIMEOUT)
    except (ClusterError, OSError) as exc:
        return None, f"the local daemon did not answer ({exc})"
    finally:
        channel.close()
    if not isinstance(answer, SlotsAnswer):
        return None, f"the local daemon answered {type(answer).__name__}"
    return answer, ""


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def slots_command(args: Sequence[str], env: ClientEnv) -> int:
    """Print the usable (``--free``: free) slot count; explain a local-only count on stderr."""
    if any(arg != "--free" for arg in args):
        sys.stderr.write(SLOTS_USAGE)
        return 2
    free = "--free" in args
    answer, why = ask_daemon(env)
    if answer is None:
        count = _cpus()
        sys.stderr.write(f"icecc: {why}; counting this machine's {count} CPUs\n")
    else:
        count = answer.free if free else answer.total
        if answer.source != _CLUSTER:
            what = "free slots" if free else "slots"
            sys.stderr.write(f"icecc: {answer.source}; counting this host's {what} only\n")
    sys.stdout.write(f"{count}\n")
    return 0
