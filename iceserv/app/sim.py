"""``iceserv sim``: replay a job trace on a simulated cluster under both placements.

This module owns the sub-command: it reads the trace and the cluster
(``--cluster FILE`` and/or ``--host NAME:SPEED:SLOTS[@JOIN]``), replays the
trace with iceserv's real scheduler core and with the model of icecream
1.4 (:mod:`iceserv.sim`), prints the figures side by side, and writes the
timeline picture (``--svg``) and the figures as JSON (``--json``) on
request.  Exit status: 0, 65 (``EX_DATAERR``) for a bad trace or cluster,
1 when a simulation cannot finish.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.sim import (
    PLACEMENTS,
    ClusterSpec,
    SimInputError,
    SimulationError,
    format_comparison,
    parse_host,
    read_cluster,
    read_trace,
    render_timeline,
    replay,
    summarize,
)

if TYPE_CHECKING:
    import argparse

__all__ = ["register", "run"]

_EXIT_DATAERR: Final = os.EX_DATAERR
_BOTH: Final = "both"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` sub-command."""
    parser = subparsers.add_parser(
        "sim",
        help="replay a job trace on a simulated cluster (iceserv's placement and 1.4's)",
        description="Replay a job trace on a simulated cluster under iceserv's placement and "
        "a model of icecream 1.4's, and compare them.",
    )
    parser.add_argument("trace", type=Path, help="job trace (JSON lines, see bench/traces)")
    parser.add_argument("--cluster", type=Path, help="cluster description (JSON)")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME:SPEED:SLOTS[@JOIN]",
        help="a simulated host (repeat; added after --cluster's hosts)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--make-jobs",
        type=int,
        metavar="N",
        help="each submitter keeps N jobs in flight (make -jN) instead of the recorded times",
    )
    parser.add_argument(
        "--placement",
        choices=(_BOTH, *PLACEMENTS),
        default=_BOTH,
        help="which placement to run (default: both)",
    )
    parser.add_argument("--svg", type=Path, help="write the per-host timeline picture here")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.set_defaults(func=_main)


def _cluster(args: argparse.Namespace) -> ClusterSpec:
    base = read_cluster(args.cluster) if args.cluster else None
    extra = tuple(parse_host(spec) for spec in args.host)
    if base is None:
        if not extra:
            msg = "give --cluster FILE or at least one --host NAME:SPEED:SLOTS"
            raise SimInputError(msg)
        return ClusterSpec(extra)
    return ClusterSpec(
        base.hosts + extra,
        bandwidth=base.bandwidth,
        env_size=base.env_size,
        install_seconds=base.install_seconds,
        latency=base.latency,
        wire_ratio=base.wire_ratio,
    )


def run(args: argparse.Namespace) -> dict[str, object]:
    """Run the replays *args* ask for, write the requested files, return the figures."""
    trace = read_trace(args.trace)
    cluster = _cluster(args)
    names = list(PLACEMENTS) if args.placement == _BOTH else [args.placement]
    results = [
        replay(trace, cluster, placement=name, seed=args.seed, make_jobs=args.make_jobs)
        for name in names
    ]
    summaries = [summarize(result) for result in results]
    sys.stdout.write(
        f"{args.trace}: {len(trace)} jobs, {sum(j.cpu for j in trace):.1f} CPU s; "
        f"{len(cluster.hosts)} hosts; "
        f"{'make -j' + str(args.make_jobs) if args.make_jobs else 'recorded times'}"
        f"; seed {args.seed}\n"
    )
    sys.stdout.write(format_comparison(summaries) + "\n")
    figures: dict[str, object] = {
        "trace": str(args.trace),
        "seed": args.seed,
        "make_jobs": args.make_jobs,
        "results": [summary.as_dict() for summary in summaries],
    }
    if args.svg:
        args.svg.write_text(render_timeline(results), encoding="utf-8")
        sys.stdout.write(f"timeline written to {args.svg}\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def _main(args: argparse.Namespace) -> int:
    try:
        run(args)
    except SimInputError as exc:
        sys.stderr.write(f"iceserv sim: {exc}\n")
        return _EXIT_DATAERR
    except SimulationError as exc:
        sys.stderr.write(f"iceserv sim: simulation failed: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"iceserv sim: {exc}\n")
        return _EXIT_DATAERR
    return 0
