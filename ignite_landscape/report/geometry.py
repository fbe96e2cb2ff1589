"""The report's figures of logged curves, by result kind: 1D slices, contour, surface, trajectory, connectivity.

Each panel is one ``(run, handler)`` pair of the kind, whatever the handler was named; the curves are
drawn by :mod:`ignite_landscape.plots` exactly as TensorBoard shows them, and the definitions under each
figure come from the handlers' records.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from ignite_landscape.report.events import RunData
    >>> figure_contour([RunData("empty", Path("."))], Path(tempfile.mkdtemp()) / "c.png") is None
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite_landscape.report.events import RunData
from ignite_landscape.report.layout import footer, panel_axes, panel_figure, panel_title, save
from ignite_landscape.report.metrics import connectivity_note, probe_note, slice_note
from ignite_landscape.results import Curve

__all__ = [
    "panels",
    "figure_slice1d",
    "figure_contour",
    "figure_surface",
    "figure_trajectory",
    "figure_connectivity",
]


def panels(runs: Sequence[RunData], kind: str, key: str) -> list[tuple[RunData, str, list[tuple[int, Curve]]]]:
    """``(run, handler name, [(step, curve), ...])`` for every handler of ``kind`` that logged curve ``key``."""
    return [(run, name, history) for run in runs for name, history in run.curve_history(kind, key)]


def _last_grid_figure(
    runs: Sequence[RunData], path: Path, kind: str, key: str, surface: bool, suptitle: str, note: str
) -> Path | None:
    from ignite_landscape import plots

    shown = panels(runs, kind, key)
    if not shown:
        return None
    fig, rows, cols = panel_figure(len(shown), footer_lines=2, width=4.6, height=4.0)
    for k, (run, name, history) in enumerate(shown):
        step, curve = history[-1]
        if surface:
            ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
            plots.draw_grid_surface(ax, curve)
        else:
            ax = fig.add_subplot(rows, cols, k + 1)
            if curve.kind == "path":
                plots.draw_path(fig, ax, curve, levels=25)
            else:
                plots.draw_grid_contour(fig, ax, curve, levels=25)
                ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{panel_title(run.name, name)}, step {step}", fontsize=10)
    fig.suptitle(suptitle)
    footer(fig, [probe_note(shown[0][0]), note])
    return save(fig, path)


def figure_contour(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per 2D-slice handler of each run: filled contours of its last slice, the current weights at ★."""
    note = slice_note(runs[0]) if runs else ""
    return _last_grid_figure(runs, path, "slice2d", "slice", False, "2D loss slice around the final weights", note)


def figure_surface(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per 2D-slice handler of each run: its last slice as a 3D surface."""
    note = slice_note(runs[0]) if runs else ""
    return _last_grid_figure(runs, path, "slice2d", "slice", True, "2D loss slice as a surface", note)


def figure_trajectory(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per trajectory handler of each run: the training path on its top-2 PCA plane over the loss (Li et al. 2018)."""
    note = "axes: weight-space distance along each unit PCA direction; the share of the path's variance in brackets"
    title = "Training path in the plane of its two principal directions (centre: the final weights)"
    return _last_grid_figure(runs, path, "trajectory", "plane", False, title, note)


def _draw_history(ax: Any, history: Sequence[tuple[int, Curve]]) -> None:
    """Every firing's line, the last over the earlier; only the first and last steps in the legend."""
    from ignite_landscape import plots

    last = len(history) - 1
    plots.draw_line(ax, [(f"step {s}" if i in (0, last) else "", c) for i, (s, c) in enumerate(history)])


def figure_slice1d(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per 1D-slice handler of each run: the slices along its fixed direction, the last drawn over the earlier."""
    shown = panels(runs, "slice1d", "slice")
    if not shown:
        return None
    fig, axes = panel_axes(len(shown), footer_lines=2)
    for (run, name, history), ax in zip(shown, axes):
        _draw_history(ax, history)
        ax.set_title(f"{panel_title(run.name, name)}: 1D slice", fontsize=10)
        ax.set_xlabel("coordinate along the direction")
        ax.set_ylabel("probe loss")
    fig.suptitle("Loss along a fixed random direction through the current weights")
    run0 = shown[0][0]
    footer(fig, [probe_note(run0), slice_note(run0, "slice1d") + "; the same direction at every firing"])
    return save(fig, path)


def figure_connectivity(runs: Sequence[RunData], path: Path) -> Path | None:
    """Per connectivity handler of each run: loss along the linear path from its reference (α = 0) to now (α = 1)."""
    shown: list[tuple[RunData, str, list[tuple[int, Curve]]]] = []
    for run in runs:
        history = dict(run.curve_history("connectivity", "interpolation"))
        for name in run.handlers("connectivity"):
            if history.get(name) or run.series(f"landscape/{name}/loss_barrier") is not None:
                shown.append((run, name, history.get(name, [])))
    if not shown:
        return None
    fig, axes = panel_axes(len(shown), footer_lines=3)
    for (run, name, history), ax in zip(shown, axes):
        if history:
            _draw_history(ax, history)
            ax.set_xlabel("α (0: reference, 1: current)")
            ax.set_ylabel("probe loss")
        else:  # only the barrier was logged: its value over training
            s = run.series(f"landscape/{name}/loss_barrier")
            ax.plot(s.steps, s.values, marker=".", color="C0")
            ax.set_xlabel("step")
            ax.set_ylabel("loss barrier")
        ax.set_title(f"{panel_title(run.name, name)}: linear mode connectivity", fontsize=10)
    fig.suptitle("Linear interpolation between a reference and the current weights")
    run0 = shown[0][0]
    footer(
        fig,
        [
            probe_note(run0),
            "curve: probe loss at (1−α)·a + α·b; " + connectivity_note(run0),
            "barrier = max over α of L(α) − [(1−α)·L(0) + α·L(1)] (0 for a curve below its chord)",
        ],
    )
    return save(fig, path)
