"""``iceserv slots [--free]``: the cluster's compile slots for this machine, for ``make -j``.

The same question and answer as ``icecc --slots``
(:mod:`iceserv.client.slotcount`): the local daemon found as ``icecc``
finds it (``ICECC_TEST_SOCKET``, the system sockets, ``~/.iceccd.socket``,
127.0.0.1:10245), asked only through its iceserv-only endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``slots`` sub-command."""
    parser = subparsers.add_parser(
        "slots",
        help="print the cluster's compile slots usable by this machine (for make -j)",
        description=(
            "Print how many compile slots of the cluster can run this machine's jobs now "
            "(hosts that take remote jobs, not blocked or draining, of a fitting platform). "
            "Without an iceserv daemon and scheduler: this host's count, and why on stderr."
        ),
    )
    parser.add_argument("--free", action="store_true", help="print only the free slots")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from iceserv.client.env import ClientEnv  # noqa: PLC0415 - only this sub-command needs it
    from iceserv.client.slotcount import slots_command  # noqa: PLC0415

    return slots_command(["--free"] if args.free else [], ClientEnv.current())
