"""``icecc --slots [--free]``: how many compile slots the cluster has for this machine's jobs.

Owns the slot count a build tool asks for (``make -j"$(icecc --slots)"``).
It finds the local daemon in 1.4's order (:mod:`iceserv.client.sockets`)
but speaks to it only through the daemon's iceserv-only endpoint
(:mod:`iceserv.protocol.endpoint`): SLOTS_QUERY is a type icecream 1.4 does
not know, and a 1.4 daemon must never receive it.  The daemon asks an
iceserv scheduler, or answers with its own slots and says why.  Without an
iceserv daemon the count is this machine's CPUs.  Whenever the number is
not the cluster's, one line on stderr says so; stdout holds only the number.

The answer is wanted within 50 ms, and importing :mod:`iceserv.protocol`
alone costs ~15 ms (more on a loaded machine), so, as
:mod:`iceserv.client.slot` does for the local slot, this module writes the
one SLOTS_QUERY frame and reads the one SLOTS_ANSWER itself, and derives the
endpoint's name itself; ``tests/client/test_slotcount.py`` checks the bytes
and the name against the protocol package.  It must not import the protocol.
"""

from __future__ import annotations

import os
import sys

from iceserv.client.slot import Reader, handshake
from iceserv.client.sockets import DAEMON_PORT, connect_tcp, connect_unix, endpoint_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Sequence
    from typing import Final

    from iceserv.client.env import ClientEnv

__all__ = ["SLOTS_USAGE", "Answer", "ask_daemon", "endpoint_name", "slots_command"]

SLOTS_USAGE: Final = "usage: icecc --slots [--free]\n"
SLOTS_QUERY: Final = 0x1CE5_0001  # iceserv.protocol.IceservMsgType.SLOTS_QUERY
SLOTS_ANSWER: Final = 0x1CE5_0002  # iceserv.protocol.IceservMsgType.SLOTS_ANSWER
#: SlotsQuery(platform=""): frame length 9, the type, the empty string (length 1, a NUL).
QUERY_FRAME: Final = (9).to_bytes(4, "big") + SLOTS_QUERY.to_bytes(4, "big") + b"\0\0\0\1\0"
#: Seconds for the answer: the daemon answers within 0.25 s even when the scheduler does not.
_ANSWER_TIMEOUT: Final = 2.0
_CONNECT_TIMEOUT: Final = 1.0
_MAX_ANSWER: Final = 4096  # three numbers and a short reason
_SYSTEM_SOCKETS: Final = ("/var/run/icecc/iceccd.socket", "/var/run/iceccd.socket")
_CLUSTER: Final = "cluster"


class Answer:
    """SLOTS_ANSWER's fields: ``total`` and ``free`` slots on ``hosts`` hosts, and ``source``."""

    __slots__ = ("free", "hosts", "source", "total")

    def __init__(self, total: int, free: int, hosts: int, source: str) -> None:
        self.total, self.free, self.hosts, self.source = total, free, hosts, source


def _candidates(env: ClientEnv) -> list[str]:
    """Return the daemon addresses 1.4's client tries, in its order (``get_local_daemon``)."""
    if env.test_socket is not None:
        return [env.test_socket]
    paths = list(_SYSTEM_SOCKETS)
    if env.home is not None:
        paths.append(env.home + "/.iceccd.socket")
    return [*paths, f"tcp:{DAEMON_PORT}"]


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


def ask_daemon(env: ClientEnv) -> tuple[Answer | None, str]:
    """Ask the local iceserv daemon; return its answer, or None and why there is none.

    The first address (1.4's order) where an iceserv endpoint or any daemon
    answers decides: a daemon without the endpoint is not iceserv and is
    only connected to and left, never sent a byte.
    """
    for address in _candidates(env):
        sock = connect_unix(endpoint_name(address), _CONNECT_TIMEOUT)
        if sock is not None:
            try:
                answer = _query(sock)
            finally:
                sock.close()
            if answer is None:
                return None, "the local daemon did not answer"
            return answer, ""
        if _reachable(address):
            return None, "the local daemon is not iceserv (icecream 1.4?)"
    return None, "no local daemon"


def _query(sock: _socket.socket) -> Answer | None:
    reader = Reader(sock, _ANSWER_TIMEOUT)
    if not handshake(sock, reader):
        return None
    try:
        sock.sendall(QUERY_FRAME)
    except OSError:
        return None
    header = reader.read(8)
    if header is None:
        return None
    length = int.from_bytes(header[:4], "big")
    if int.from_bytes(header[4:], "big") != SLOTS_ANSWER or not 4 <= length <= _MAX_ANSWER:
        return None
    payload = reader.read(length - 4)
    return None if payload is None else parse_answer(payload)


def parse_answer(payload: bytes) -> Answer | None:
    """Decode a SLOTS_ANSWER payload (three u32, one string); None if malformed."""
    if len(payload) < 16:
        return None
    total, free, hosts, size = (int.from_bytes(payload[i : i + 4], "big") for i in (0, 4, 8, 12))
    if 16 + size != len(payload):
        return None
    text = payload[16:].split(b"\0", 1)[0]
    return Answer(total, free, hosts, text.decode("utf-8", "replace"))


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
