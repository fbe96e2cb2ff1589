"""Figures for the curves of any result kind the report has no dedicated figure for.

A measure added in its own module (:mod:`ignite_landscape.measures.diagonal_profile`, or a user's own)
logs its curves through :class:`~ignite_landscape.LandscapeLogHandler` like every other; this module
draws them from the event file by :attr:`~ignite_landscape.results.Curve.kind` alone, so such a measure
is reported with no edit to the report: ``line`` curves over firings (the last drawn over earlier ones
when the curve asks for an overlay), ``grid`` as contours, ``path`` over its plane, ``histogram`` of the
last firing, ``bars`` as a labels × firings heatmap. One PNG per run, handler and curve key, named
``<handler>_<curve key>.png`` (with the run's name in front when several runs are reported).

Example:
    >>> from ignite_landscape.report.events import RunData
    >>> figure_other_curves([RunData(name="empty", path="")], Path("unused"))
    {}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ignite_landscape import plots
from ignite_landscape.report.events import RunData
from ignite_landscape.report.layout import save
from ignite_landscape.results import KINDS, Curve

__all__ = ["figure_other_curves", "MAX_LINES"]

# Earlier firings drawn under the last one in an overlaid line figure.
MAX_LINES = 8


def _figure(name: str, key: str, history: Sequence[tuple[int, Curve]]) -> object:
    step, last = history[-1]
    if last.kind == "line":
        shown = history[-MAX_LINES:] if last.overlay else history[-1:]
    elif last.kind == "bars":
        shown = history
    else:
        shown = history[-1:]
    pairs = [(f"step {s}", c) for s, c in shown if c.kind == last.kind]
    title = f"{name}: {key} over firings" if last.kind == "bars" else f"{name}: {key} at step {step}"
    return plots.curve_figure(pairs, title=title)


def _file_name(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", p) for p in parts) + ".png"


def figure_other_curves(runs: Sequence[RunData], out_dir: Path) -> dict[str, Path]:
    """One figure per curve of every handler whose kind has no dedicated report figure.

    Args:
        runs: the runs read.
        out_dir: where the PNGs go.

    Returns:
        Figure name (the file's stem) → PNG path; empty when every handler's kind has its own figure.
    """
    written: dict[str, Path] = {}
    for run in runs:
        for name in run.handler_names():
            if run.kind_of(name) in KINDS:
                continue
            keys = sorted({key for _, curves in run.curves(name) for key in curves})
            for key in keys:
                history = [(step, curves[key]) for step, curves in run.curves(name) if key in curves]
                file = _file_name(*([run.name] if len(runs) > 1 else []), name, key)
                written[file.removesuffix(".png")] = save(_figure(name, key, history), out_dir / file)
    return written
