"""Curves as figures and histograms, dispatched on ``Curve.kind`` alone.

* ``line``: a figure (an ``overlay`` line over the last ``max_slice_curves`` firings' lines);
* ``grid``: filled contours; ``path``: the path over its plane's contours;
* ``bars``: a labels × firings heatmap of every firing so far;
* ``histogram``: a TensorBoard histogram (weighted samples through ``add_histogram_raw``).

Each is written at ``landscape/<name>/<curve_key>``.

Example:
    >>> from ignite_landscape.results import Curve
    >>> curve = Curve("grid", x=[-1.0, 0.0, 1.0], y=[-1.0, 1.0], z=[[2.0, 2.0], [1.0, 1.0], [2.0, 2.0]])
    >>> fig = curve_figure("slice2d", "slice", [("epoch 1", curve)])
    >>> fig.axes[1].get_ylabel()  # the colour bar
    'log10 loss'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ignite.engine import Engine

from ignite_landscape.results import Curve
from ignite_landscape.tensorboard.base import LandscapeWriter
from ignite_landscape.tensorboard.common import CurveHistory, Fresh, check_writer_options, firing_label

__all__ = ["FiguresWriter", "HistogramsWriter", "curve_figure", "write_histogram", "HISTOGRAM_BINS"]

# Buckets of a weighted histogram (an SLQ spectral measure): as many as TensorBoard's default view shows well.
HISTOGRAM_BINS = 64


def curve_figure(name: str, key: str, shown: Sequence[tuple[str, Curve]], *, log_scale: bool = True) -> Any:
    """The matplotlib figure of a curve: ``shown`` holds ``(label, curve)`` pairs, the current curve last.

    ``shown`` is what :meth:`~ignite_landscape.tensorboard.CurveHistory.add` returns: earlier overlay lines
    or ``bars`` columns, then the current curve. Titles name the handler, the curve and the last label.
    """
    from ignite_landscape import plots  # matplotlib is imported only when a figure is drawn

    label, curve = shown[-1]
    title = f"{name}: {key}" + (f" ({label})" if label and len(shown) == 1 else "")
    if curve.kind == "bars" and not curve.ylabel:  # the heatmap's colour bar names the curve
        curve = dataclasses.replace(curve, ylabel=key)
        shown = [*shown[:-1], (label, curve)]
    return plots.curve_figure(shown, title=title, log_scale=log_scale, bins=HISTOGRAM_BINS)


def write_histogram(writer: Any, tag: str, curve: Curve, step: int, bins: int = HISTOGRAM_BINS) -> None:
    """A ``histogram`` curve as a TensorBoard histogram; non-finite samples and weights are left out.

    Unit weights (empty ``y``) go through ``add_histogram``; weighted samples (the SLQ quadrature: node θ
    carries a count of the P eigenvalues) through ``add_histogram_raw``, whose ``num`` is the total weight
    and ``sum`` the first moment (for the spectral measure, SLQ's trace estimate).
    """
    x = curve.x
    w = curve.y if curve.y.size else None
    keep = np.isfinite(x) if w is None else np.isfinite(x) & np.isfinite(w)
    if not keep.any():
        return
    if w is None:
        writer.add_histogram(tag, x[keep], step)
        return
    x, w = x[keep], w[keep]
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        hi = lo + 1e-12 * max(1.0, abs(lo))
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(x, edges, weights=w)
    writer.add_histogram_raw(
        tag,
        min=lo,
        max=hi,
        num=float(w.sum()),
        sum=float((w * x).sum()),
        sum_squares=float((w * x**2).sum()),
        bucket_limits=edges[1:].tolist(),
        bucket_counts=counts.tolist(),
        global_step=step,
    )


class FiguresWriter(LandscapeWriter):
    """Writes every ``line``, ``grid``, ``path`` and ``bars`` curve as a figure at ``landscape/<name>/<key>``.

    Args:
        names: only these handler names (default: all).
        global_step_transform: ``f(engine, event_name) -> int`` (default: the trainer's iteration).
        max_slice_curves: how many firings of an ``overlay`` line (the 1D slice) one figure shows.
        log_scale: colour grids by ``log10(loss)`` (when positive).
    """

    KINDS = ("line", "grid", "path", "bars")

    def __init__(
        self,
        names: Sequence[str] | None = None,
        *,
        global_step_transform: Callable[[Engine, Any], int] | None = None,
        max_slice_curves: int = 8,
        log_scale: bool = True,
    ) -> None:
        super().__init__(names, global_step_transform=global_step_transform)
        check_writer_options(None, None, max_slice_curves)
        self.log_scale = log_scale
        self.history = CurveHistory(max_slice_curves)

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Draw each drawable curve of ``fresh`` and add it as an image at ``step``."""
        for f in fresh:
            for key, curve in f.curves.items():
                if curve.kind not in self.KINDS:
                    continue
                shown = self.history.add(f.name, key, firing_label(f.firing), curve)
                self.guarded(f"{f.name}/{key}", self._draw, writer, f.name, key, shown, step)

    def _draw(self, writer: Any, name: str, key: str, shown: list[tuple[str, Curve]], step: int) -> None:
        fig = curve_figure(name, key, shown, log_scale=self.log_scale)
        writer.add_figure(f"landscape/{name}/{key}", fig, step, close=True)


class HistogramsWriter(LandscapeWriter):
    """Writes every ``histogram`` curve at ``landscape/<name>/<key>`` (see :func:`write_histogram`)."""

    def write(self, writer: Any, engine: Engine, fresh: list[Fresh], step: int) -> None:
        """Add each histogram curve of ``fresh`` at ``step``."""
        for f in fresh:
            for key, curve in f.curves.items():
                if curve.kind == "histogram":
                    tag = f"landscape/{f.name}/{key}"
                    self.guarded(tag, write_histogram, writer, tag, curve, step)
