"""Page layout of the report's figures: panel grids, definition footers, error bands, saving.

The curves themselves are drawn by :mod:`ignite_landscape.plots` (one drawing, one colour convention for
TensorBoard and the report); this module only arranges panels and writes the definitions under them.

Example:
    >>> fig, rows, cols = panel_figure(4, footer_lines=1)
    >>> rows, cols
    (2, 3)
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ignite_landscape.measures.jackknife import INTERVAL_Z
from ignite_landscape.report.events import Series

__all__ = ["BAND_NOTE", "new_figure", "panel_figure", "panel_axes", "footer", "color", "save", "band", "panel_title"]

BAND_NOTE = (
    "bands: ±2 standard errors where the run logged one (the jackknife over probe chunks with "
    "uncertainty='jackknife', else the estimator's own)"
)


def new_figure(rows: int, cols: int, width: float = 4.2, height: float = 3.2, footer_lines: int = 2) -> Any:
    """A constrained-layout figure for ``rows × cols`` panels with room for ``footer_lines`` of definitions."""
    from matplotlib.figure import Figure

    # At least 8 inches wide: the footer lines with the definitions must fit.
    return Figure(figsize=(max(width * cols, 8.0), height * rows + 0.15 * footer_lines), layout="constrained")


def panel_figure(count: int, footer_lines: int, **size: float) -> tuple[Any, int, int]:
    """A figure for ``count`` panels, at most three a row: ``(figure, rows, cols)``."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    return new_figure(rows, cols, footer_lines=footer_lines, **size), rows, cols


def panel_axes(count: int, footer_lines: int, **size: float) -> tuple[Any, list[Any]]:
    """A :func:`panel_figure` with its ``count`` axes added in reading order: ``(figure, axes)``.

    Example:
        >>> fig, axes = panel_axes(4, footer_lines=1)
        >>> len(axes), axes[3].get_subplotspec().get_geometry()[:2]
        (4, (2, 3))
    """
    fig, rows, cols = panel_figure(count, footer_lines, **size)
    return fig, [fig.add_subplot(rows, cols, k + 1) for k in range(count)]


def footer(fig: Any, lines: Sequence[str]) -> None:
    """Definitions behind the numbers, printed under the axes (constrained layout makes room for them)."""
    # Definitions are whole sentences: wrap them to the figure's width (about 17 characters an inch at 7 pt).
    width = max(60, int(fig.get_figwidth() * 17))
    wrapped = [textwrap.fill(line, width, subsequent_indent="    ") for line in dict.fromkeys(lines) if line]
    text = "\n".join(wrapped)
    if text:
        fig.supxlabel(text, x=0.005, ha="left", fontsize=7, color="0.25")


def color(i: int) -> str:
    """The ``i``-th colour of the default cycle (one per run or per eigenvalue)."""
    return f"C{i % 10}"


def save(fig: Any, path: Path) -> Path:
    """Write ``fig`` as PNG to ``path`` and return the path."""
    fig.savefig(path, dpi=110)
    return path


def panel_title(run_name: str, handler: str) -> str:
    """A panel's title: the run and the handler (a run may hold several handlers of one kind)."""
    return f"{run_name} · {handler}"


def band(ax: Any, s: Series, err: Series | None, colour: str) -> bool:
    """Shade ``s ± INTERVAL_Z·err`` at the steps both were logged; whether anything was drawn."""
    if err is None:
        return False
    steps = np.intersect1d(s.steps, err.steps)
    v = np.array([s.at(t) for t in steps])
    e = np.array([err.at(t) for t in steps])
    ok = np.isfinite(v) & np.isfinite(e)
    if not ok.any():
        return False
    ax.fill_between(steps[ok], v[ok] - INTERVAL_Z * e[ok], v[ok] + INTERVAL_Z * e[ok], color=colour, alpha=0.2, lw=0)
    ax.errorbar(steps[ok], v[ok], yerr=INTERVAL_Z * e[ok], fmt="none", ecolor=colour, elinewidth=0.8, capsize=2)
    return True
