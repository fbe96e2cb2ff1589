"""Matplotlib figures drawn from :class:`~ignite_landscape.results.Curve` objects (TensorBoard, MLflow, report).

Every builder takes curves (or plain numbers), never result objects, so the TensorBoard writers, the
MLflow handler and the ``report`` command draw any measure's curves the same way, keyed by
``Curve.kind`` alone. Figures are created without pyplot, so nothing here depends on the global pyplot
state or on an interactive backend, and it is safe to call from a training loop; whoever consumes a
figure renders it (``SummaryWriter.add_figure``, ``Figure.savefig``).

The ``draw_*`` functions draw on a given axes (the report's multi-run panels); the ``*_figure``
functions wrap them in a figure of their own. One colour convention for loss grids everywhere
(:func:`loss_scale`): ``log10(loss)`` when every value is positive, the loss itself otherwise.

Example:
    >>> from ignite_landscape.results import Curve
    >>> c = Curve("line", x=[-1.0, 0.0, 1.0], y=[2.0, 1.0, 2.5], extra={"accuracy": [0.5, 0.9, 0.4]})
    >>> fig = line_figure([("epoch 1", c)], title="1D slice")
    >>> len(fig.axes)  # the loss, and the accuracy panel under it
    2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ignite_landscape.results import Curve

__all__ = [
    "curve_figure",
    "finite_grid",
    "loss_scale",
    "series_of",
    "draw_line",
    "line_figure",
    "draw_grid_contour",
    "grid_contour_figure",
    "draw_grid_surface",
    "grid_surface_figure",
    "draw_path",
    "path_figure",
    "bars_heatmap_figure",
    "histogram_figure",
    "spectrum_figure",
]

# A positive line spanning more decades than this is drawn on a log axis (an SLQ density does; a slice does not).
LOG_Y_DECADES = 3.0


def finite_grid(values: Any) -> np.ndarray:
    """``values`` as float64 numpy with non-finite entries replaced by the largest finite value.

    A slice that walks far from the minimum can overflow; plotting it as the ceiling keeps the rest
    of the surface readable instead of failing.

    Example:
        >>> finite_grid([1.0, float("inf"), 3.0]).tolist()
        [1.0, 3.0, 3.0]
    """
    # A tensor goes through .numpy(): numpy 2 warns when it converts one through __array__ with a dtype.
    z = np.array(values.detach().cpu().double().numpy() if hasattr(values, "detach") else values, dtype=np.float64)
    finite = np.isfinite(z)
    if not finite.any():
        return np.zeros_like(z)
    z[~finite] = z[finite].max()
    return z


def loss_scale(z: Any, log_scale: bool = True) -> tuple[np.ndarray, str]:
    """The values a loss grid is coloured (and raised) by, and their label: the one convention of every figure.

    ``log10`` of the (finite-clipped) grid when ``log_scale`` and every value is positive, so a basin with
    steep walls stays readable; the loss itself otherwise.

    Example:
        >>> v, label = loss_scale([[1.0, 10.0], [100.0, 1000.0]])
        >>> v.tolist(), label
        ([[0.0, 1.0], [2.0, 3.0]], 'log10 loss')
    """
    z = finite_grid(z)
    if log_scale and z.size and bool((z > 0).all()):
        return np.log10(z), "log10 loss"
    return z, "loss"


def series_of(curve: Curve) -> list[str]:
    """The names of ``curve``'s further y-series: the ``extra`` arrays with one value per ``x``.

    Example:
        >>> series_of(Curve("line", x=[0, 1], y=[1, 2], extra={"error": [0.1, 0.2], "loss_barrier": 0.3}))
        ['error']
    """
    return [k for k, v in curve.extra.items() if isinstance(v, np.ndarray) and v.size == curve.x.size > 1]


def _numbers(curve: Curve) -> str:
    """The one-number extras of a curve (``loss_barrier 0.0123``), for a title."""
    parts = [
        f"{k} {float(v.reshape(-1)[0]):.4g}"
        for k, v in curve.extra.items()
        if isinstance(v, np.ndarray) and v.size == 1
    ]
    parts += [f"{k} {v}" for k, v in curve.extra.items() if isinstance(v, (bool, str))]
    return ", ".join(parts)


def draw_line(ax: Any, curves: Sequence[tuple[str, Curve]], *, series: str = "y", log_y: bool | None = None) -> None:
    """Draw one series of line curves on ``ax``: the last (current) one over the earlier ones, which fade.

    Args:
        ax: matplotlib axes.
        curves: ``(label, curve)`` pairs, oldest first (``label`` may be empty).
        series: ``"y"`` or the name of an ``extra`` series (:func:`series_of`); curves without it are left out.
        log_y: logarithmic y axis; by default when the current series is non-negative and spans more
            than ``LOG_Y_DECADES`` decades (a density), floored at ``1e-8`` of its maximum.
    """
    n = len(curves)
    drawn = [(i, label, c, c.y if series == "y" else c.extra.get(series)) for i, (label, c) in enumerate(curves)]
    drawn = [(i, label, c, np.asarray(v, dtype=np.float64)) for i, label, c, v in drawn if v is not None]
    if not drawn:
        return
    current = finite_grid(drawn[-1][3])
    positive = current[current > 0]
    if log_y is None:
        log_y = bool(
            positive.size and (current >= 0).all() and math.log10(positive.max() / positive.min()) > LOG_Y_DECADES
        )
    floor = float(positive.max()) * 1e-8 if log_y and positive.size else None
    for i, label, c, v in drawn:
        last = i == n - 1
        y = finite_grid(v) if floor is None else np.clip(finite_grid(v), floor, None)
        alpha = 1.0 if last else 0.25 + 0.5 * i / max(n - 1, 1)
        ax.plot(
            c.x, y, color="C3" if last and n > 1 else "C0", alpha=alpha, lw=2.0 if last else 1.0, label=label or None
        )
    x = drawn[-1][2].x
    if x.size and x.min() < 0 < x.max():  # the current weights of a slice, eigenvalue 0 of a density
        ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(drawn[-1][2].ylabel if series == "y" else series)
    if any(label for _, label, _, _ in drawn) and n > 1:
        ax.legend(fontsize="small")


def line_figure(curves: Sequence[tuple[str, Curve]], *, title: str = "", log_y: bool | None = None) -> Figure:
    """Line curves on shared axes (current over earlier), with a panel under it for each further series.

    Args:
        curves: ``(label, curve)`` pairs of ``kind == "line"``, oldest first; the last one is the current.
        title: figure title; one-number extras of the current curve (``loss_barrier``) are appended.
        log_y: logarithmic main axis (default: decided by :func:`draw_line`).

    Raises:
        ValueError: if ``curves`` is empty or holds a curve that is not a line.
    """
    if not curves:
        raise ValueError("curves must hold at least one line curve")
    if any(c.kind != "line" for _, c in curves):
        raise ValueError(f"line_figure draws line curves, got {sorted({c.kind for _, c in curves})}")
    current = curves[-1][1]
    extra = series_of(current)
    fig = Figure(figsize=(6.4, 3.8 + 1.2 * len(extra)), layout="constrained")
    axes = fig.subplots(1 + len(extra), 1, sharex=True, height_ratios=[2] + [1] * len(extra), squeeze=False)[:, 0]
    draw_line(axes[0], curves, log_y=log_y)
    for ax, key in zip(axes[1:], extra):
        draw_line(ax, curves, series=key, log_y=False)
    axes[-1].set_xlabel(current.xlabel)
    numbers = _numbers(current)
    axes[0].set_title(f"{title}\n{numbers}" if numbers else title)
    return fig


def _axis_labels(ax: Any, curve: Curve) -> None:
    ratios = curve.extra.get("explained_variance")
    if isinstance(ratios, np.ndarray) and ratios.size >= 2:  # a PCA plane: say how much of the path it holds
        ax.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}% of the path's variance)")
        ax.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}%)")
    else:
        ax.set_xlabel(curve.xlabel or "direction 1")
        ax.set_ylabel("direction 2")


def draw_grid_contour(fig: Figure, ax: Any, curve: Curve, *, levels: int = 30, log_scale: bool = True) -> None:
    """Filled contours of a ``grid`` (or ``path``) curve's ``z`` on ``ax``, the origin (current weights) marked ★."""
    shown, label = loss_scale(curve.z, log_scale)
    # z[i, j] has i along x; contourf wants rows along y.
    cs = ax.contourf(curve.x, curve.y, shown.T, levels=levels, cmap="viridis")
    ax.contour(curve.x, curve.y, shown.T, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label=label)
    ax.plot([0.0], [0.0], marker="*", color="w", markeredgecolor="k", markersize=12, ls="", label="now")
    _axis_labels(ax, curve)


def grid_contour_figure(curve: Curve, *, title: str = "", levels: int = 30, log_scale: bool = True) -> Figure:
    """A ``grid`` curve (a 2D loss slice) as filled contours (:func:`loss_scale` colours)."""
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.subplots()
    draw_grid_contour(fig, ax, curve, levels=levels, log_scale=log_scale)
    ax.set_aspect("equal", adjustable="box")
    ax.set_title(title)
    return fig


def draw_grid_surface(ax: Any, curve: Curve, *, log_scale: bool = True) -> None:
    """A ``grid`` curve as a shaded 3D surface on a ``projection="3d"`` axes."""
    shown, label = loss_scale(curve.z, log_scale)
    X, Y = np.meshgrid(curve.x, curve.y, indexing="ij")
    ax.plot_surface(X, Y, shown, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel(curve.xlabel or "direction 1")
    ax.set_ylabel("direction 2")
    ax.set_zlabel(label)


def grid_surface_figure(curve: Curve, *, title: str = "", log_scale: bool = True) -> Figure:
    """A ``grid`` curve as a 3D surface figure."""
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    draw_grid_surface(ax, curve, log_scale=log_scale)
    ax.set_title(title)
    return fig


def draw_path(fig: Figure, ax: Any, curve: Curve, *, levels: int = 30, log_scale: bool = True) -> None:
    """A ``path`` curve on ``ax``: the loss contours of its plane and the path (``extra["path_x"]``, ``["path_y"]``)."""
    draw_grid_contour(fig, ax, curve, levels=levels, log_scale=log_scale)
    px, py = curve.extra.get("path_x"), curve.extra.get("path_y")
    if isinstance(px, np.ndarray) and isinstance(py, np.ndarray) and px.size:
        ax.plot(px, py, color="C3", lw=1.5, marker="o", markersize=3, label="path")
        ax.plot(px[:1], py[:1], marker="o", color="w", markeredgecolor="k", markersize=8, ls="", label="start")
    ratios = curve.extra.get("explained_variance")
    if isinstance(ratios, np.ndarray) and ratios.size >= 2:
        note = f"explained variance: PC1 {ratios[0]:.3f}, PC2 {ratios[1]:.3f}"
        if ratios[0] + ratios[1] < 0.5:
            note += "\n(small: the plane shows little of the path)"
        box = {"fc": "w", "alpha": 0.8, "lw": 0}
        ax.text(0.02, 0.98, note, transform=ax.transAxes, va="top", fontsize="small", bbox=box)
    ax.legend(loc="lower right", fontsize="small")


def path_figure(curve: Curve, *, title: str = "", levels: int = 30, log_scale: bool = True) -> Figure:
    """A ``path`` curve (the training path over its PCA plane, Li et al. 2018) as a figure."""
    fig = Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.subplots()
    draw_path(fig, ax, curve, levels=levels, log_scale=log_scale)
    ax.set_title(title)
    return fig


def bars_heatmap_figure(columns: Sequence[tuple[str, Curve]], *, title: str = "", quantity: str = "") -> Figure:
    """``bars`` curves of successive firings as a labels × firings heatmap (rows: labels, e.g. layers).

    Args:
        columns: ``(column label, curve)`` pairs, oldest first; columns whose labels differ from the
            last curve's (a model that changed) are left out.
        title: figure title.
        quantity: what the colour shows (default: the last curve's ``ylabel``).

    Colours are ``sign(v)·log10(1 + |v|)`` so that rows differing by orders of magnitude (and the
    occasional negative trace) stay readable on one scale.

    Raises:
        ValueError: if ``columns`` is empty or holds a curve that is not bars.
    """
    if not columns:
        raise ValueError("columns must hold at least one bars curve")
    if any(c.kind != "bars" for _, c in columns):
        raise ValueError(f"bars_heatmap_figure draws bars curves, got {sorted({c.kind for _, c in columns})}")
    labels = columns[-1][1].labels
    kept = [(name, c) for name, c in columns if c.labels == labels]
    grid = np.stack([c.y for _, c in kept], axis=1)
    shown = np.sign(grid) * np.log10(1.0 + np.abs(np.nan_to_num(grid)))
    fig = Figure(figsize=(max(4.0, 0.5 * len(kept) + 3.0), max(2.5, 0.35 * len(labels) + 1.5)), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels=list(labels))
    step = max(1, len(kept) // 12)
    ax.set_xticks(range(0, len(kept), step), labels=[n for n, _ in kept][::step], rotation=45, ha="right")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=f"sign·log10(1+|{quantity or columns[-1][1].ylabel or 'value'}|)")
    return fig


def histogram_figure(curve: Curve, *, title: str = "", bins: int = 64) -> Figure:
    """A ``histogram`` curve (samples ``x``, weights ``y`` or unit weights) as a bar histogram."""
    x, w = curve.x, (curve.y if curve.y.size else np.ones_like(curve.x))
    keep = np.isfinite(x) & np.isfinite(w)
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    if keep.any():
        ax.hist(x[keep], bins=bins, weights=w[keep], color="C0")
    ax.set_xlabel(curve.xlabel)
    ax.set_ylabel(curve.ylabel or "count")
    ax.set_title(title)
    return fig


def curve_figure(
    shown: Sequence[tuple[str, Curve]], *, title: str = "", log_scale: bool = True, bins: int = 64
) -> Figure:
    """The figure of a curve by its kind: ``shown`` holds ``(label, curve)`` pairs, the current curve last.

    Earlier pairs are the overlay lines of a ``line`` curve or the earlier columns of a ``bars`` heatmap;
    the other kinds draw the current curve alone.
    """
    curve = shown[-1][1]
    if curve.kind == "line":
        return line_figure(shown, title=title)
    if curve.kind == "grid":
        return grid_contour_figure(curve, title=title, log_scale=log_scale)
    if curve.kind == "path":
        return path_figure(curve, title=title, log_scale=log_scale)
    if curve.kind == "bars":
        return bars_heatmap_figure(shown, title=title, quantity=curve.ylabel)
    return histogram_figure(curve, title=title, bins=bins)


def spectrum_figure(
    steps: Sequence[float],
    eigenvalues: Sequence[Sequence[float]],
    *,
    threshold: Sequence[float] | None = None,
    title: str = "Top Hessian eigenvalues",
    xlabel: str = "step",
) -> Figure:
    """λ_1 … λ_k over training, with the stability threshold ``2/η`` when given.

    Args:
        steps: x positions (epochs or iterations).
        eigenvalues: one sequence of eigenvalues (descending) per step; ragged is allowed.
        threshold: stability threshold at each step (``NaN`` where unknown).
        title: figure title.
        xlabel: x label.
    """
    if len(steps) != len(eigenvalues):
        raise ValueError("steps and eigenvalues must have the same length")
    k = max((len(e) for e in eigenvalues), default=0)
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.asarray(steps, dtype=np.float64)
    for i in range(k):
        y = np.array([e[i] if len(e) > i else math.nan for e in eigenvalues], dtype=np.float64)
        ax.plot(x, y, marker=".", label=f"λ_{i + 1}", color=f"C{i % 10}", alpha=1.0 if i == 0 else 0.6)
    if threshold is not None:
        ax.plot(x, np.asarray(threshold, dtype=np.float64), "k--", label="stability threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("eigenvalue")
    ax.set_title(title)
    if k or threshold is not None:
        ax.legend(fontsize="small")
    return fig
