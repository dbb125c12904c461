"""A per-host timeline picture of simulated replays, as hand-written SVG.

This module owns drawing: one panel per replay, stacked on a shared time
axis, one row per host slot, one bar per compile (coloured by submitter,
outlined when the submitter compiled it itself), grey bars for environment
installs, and a tooltip per bar.  It returns the SVG text; writing the file
is the caller's business.  No plotting library, no I/O.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final
from xml.sax.saxutils import escape, quoteattr

if TYPE_CHECKING:
    from collections.abc import Sequence

    from iceserv.sim.engine import SimResult

__all__ = ["render_timeline"]

_WIDTH: Final = 1200
_LEFT: Final = 170
_RIGHT: Final = 20
_LANE: Final = 8
_HOST_GAP: Final = 6
_TITLE: Final = 34
_AXIS: Final = 26
_PALETTE: Final = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def _tick_step(span: float) -> float:
    """Return a round tick interval giving about 10 ticks over *span* seconds."""
    raw = max(span, 1e-9) / 10
    magnitude = 10 ** math.floor(math.log10(raw))
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw))


def _panel(result: SimResult, top: float, scale: float, colours: dict[str, str]) -> list[str]:
    runs = result.runs
    makespan = max(run.done for run in runs) - min(run.submit for run in runs)
    mean_wait = sum(run.wait for run in runs) / len(runs)
    title = (
        f"{result.placement}: makespan {makespan:.1f} s, mean wait {mean_wait:.2f} s, "
        f"{len(runs)} jobs"
    )
    out = [f'<text x="10" y="{top + 20:.1f}" class="title">{escape(title)}</text>']
    y = top + _TITLE
    for host in result.hosts:
        lanes = max(1, host.slots)
        height = lanes * _LANE
        label = f"{host.name} \N{MULTIPLICATION SIGN}{host.speed:g} ({host.slots})"
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + min(height, 12) - 2:.1f}" '
            f'class="host">{escape(label)}</text>'
        )
        out.append(
            f'<rect x="{_LEFT}" y="{y:.1f}" width="{_WIDTH - _LEFT - _RIGHT}" '
            f'height="{height}" class="lanes"/>'
        )
        for install in result.installs:
            if install.host == host.name:
                x = _LEFT + install.start * scale
                w = max(1.0, (install.end - install.start) * scale)
                out.append(
                    f'<rect x="{x:.2f}" y="{y:.1f}" width="{w:.2f}" height="{height}" '
                    'class="install"><title>environment install</title></rect>'
                )
        for run in runs:
            if run.server != host.name:
                continue
            x = _LEFT + run.start * scale
            w = max(0.6, (run.end - run.start) * scale)
            own = ' class="own"' if run.server == run.submitter else ""
            tip = (
                f"{run.file or '#' + str(run.index)} from {run.submitter}: "
                f"submitted {run.submit:.2f}, ran {run.start:.2f}-{run.end:.2f}"
            )
            out.append(
                f'<rect x="{x:.2f}" y="{y + run.lane * _LANE + 1:.1f}" width="{w:.2f}" '
                f'height="{_LANE - 2}" fill={quoteattr(colours[run.submitter])}{own}>'
                f"<title>{escape(tip)}</title></rect>"
            )
        y += height + _HOST_GAP
    return out


def _height(result: SimResult) -> float:
    lanes = sum(max(1, host.slots) * _LANE + _HOST_GAP for host in result.hosts)
    return _TITLE + lanes + 8


def render_timeline(results: Sequence[SimResult]) -> str:
    """Return an SVG document showing every replay in *results* on one time axis."""
    end = max(max(run.done for run in result.runs) for result in results)
    scale = (_WIDTH - _LEFT - _RIGHT) / max(end, 1e-9)
    submitters = sorted({run.submitter for result in results for run in result.runs})
    colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(submitters)}
    body: list[str] = []
    top = 0.0
    for result in results:
        body += _panel(result, top, scale, colours)
        top += _height(result)
    step = _tick_step(end)
    ticks = []
    for i in range(int(end / step) + 1):
        x = _LEFT + i * step * scale
        ticks.append(f'<line x1="{x:.2f}" y1="0" x2="{x:.2f}" y2="{top:.1f}" class="grid"/>')
        ticks.append(f'<text x="{x:.2f}" y="{top + 16:.1f}" class="tick">{i * step:g} s</text>')
    legend = [
        f'<rect x="{_LEFT + 180 * i}" y="{top + 30:.1f}" width="12" height="10" '
        f'fill={quoteattr(colours[name])}/><text x="{_LEFT + 180 * i + 16}" y="{top + 39:.1f}" '
        f'class="legend">{escape(name)}</text>'
        for i, name in enumerate(submitters)
    ]
    legend.append(f'<text x="10" y="{top + 39:.1f}" class="legend">submitters:</text>')
    height = top + _AXIS + 24
    style = (
        "<style>.title{font:bold 14px sans-serif}.host{font:11px sans-serif;text-anchor:end}"
        ".tick{font:10px sans-serif;text-anchor:middle;fill:#555}.legend{font:11px sans-serif}"
        ".lanes{fill:#f4f4f4}.grid{stroke:#ddd;stroke-width:0.5}"
        ".install{fill:#999;opacity:0.5}.own{stroke:#000;stroke-width:0.6}</style>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {_WIDTH} {height:.0f}">{style}'
        f'<rect width="100%" height="100%" fill="white"/>'
        + "".join(ticks + body + legend)
        + "</svg>\n"
    )
