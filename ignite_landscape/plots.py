"""Matplotlib figures built from result objects (TensorBoard images and the ``report`` command).

Every builder takes plain result objects (or plain numbers) and returns a
:class:`matplotlib.figure.Figure` created without pyplot, so nothing here depends on the global
pyplot state or on an interactive backend, and it is safe to call from a training loop. The
figures are rendered by whoever consumes them (``SummaryWriter.add_figure``, ``Figure.savefig``).

Example:
    >>> import torch
    >>> from types import SimpleNamespace
    >>> res = SimpleNamespace(coords=[torch.linspace(-1, 1, 5)], loss=torch.tensor([3.0, 1.5, 1.0, 1.4, 2.9]),
    ...                       accuracy=None, dims=1)
    >>> fig = slice_1d_figure([res], labels=["epoch 1"])
    >>> len(fig.axes)
    1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

__all__ = [
    "slice_1d_figure",
    "slice_2d_contour_figure",
    "slice_2d_surface_figure",
    "density_figure",
    "interpolation_figure",
    "spectrum_figure",
    "finite_grid",
    "layer_heatmap_figure",
    "trajectory_plane_figure",
    "draw_trajectory_plane",
]


def _np(t: Any) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def finite_grid(loss: Any) -> np.ndarray:
    """A loss grid as float64 numpy with non-finite entries replaced by the largest finite value.

    A slice that walks far from the minimum can overflow; plotting it as the ceiling keeps the rest
    of the surface readable instead of failing.
    """
    z = _np(loss).copy()
    finite = np.isfinite(z)
    if not finite.any():
        return np.zeros_like(z)
    z[~finite] = z[finite].max()
    return z


def slice_1d_figure(
    results: Sequence[Any],
    labels: Sequence[str] | None = None,
    *,
    title: str = "1D loss slice",
    log_scale: bool = False,
) -> Figure:
    """Loss (and accuracy, when available) along one direction, the last result drawn over the others.

    Args:
        results: 1D slice results (``coords``, ``loss``, ``accuracy``), oldest first. All share one pair
            of axes, so slices at different epochs are directly comparable; older ones fade.
        labels: one legend entry per result (e.g. ``"epoch 3"``).
        title: figure title.
        log_scale: logarithmic loss axis.

    Raises:
        ValueError: if ``results`` is empty or the labels do not match.
    """
    if not results:
        raise ValueError("results must hold at least one 1D slice")
    if labels is not None and len(labels) != len(results):
        raise ValueError(f"labels has {len(labels)} entries for {len(results)} results")
    with_acc = any(getattr(r, "accuracy", None) is not None for r in results)
    fig = Figure(figsize=(6.4, 4.8 if with_acc else 3.8), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1]) if with_acc else [fig.subplots()]
    n = len(results)
    for i, res in enumerate(results):
        current = i == n - 1
        alpha = 1.0 if current else 0.25 + 0.5 * i / max(n - 1, 1)
        kwargs = {"color": "C3" if current else "C0", "alpha": alpha, "lw": 2.0 if current else 1.0}
        label = labels[i] if labels is not None else None
        x = _np(res.coords[0])
        axes[0].plot(x, finite_grid(res.loss), label=label, **kwargs)
        if with_acc and res.accuracy is not None:
            axes[1].plot(x, _np(res.accuracy), **kwargs)
    axes[0].axvline(0.0, color="0.6", lw=0.8, ls=":")
    axes[0].set_ylabel("loss")
    if log_scale:
        axes[0].set_yscale("log")
    if labels is not None:
        axes[0].legend(fontsize="small")
    axes[0].set_title(title)
    if with_acc:
        axes[1].set_ylabel("accuracy")
    axes[-1].set_xlabel("step along the direction")
    return fig


def slice_2d_contour_figure(
    result: Any, *, title: str = "2D loss slice", levels: int = 30, log_scale: bool = True
) -> Figure:
    """Filled contours of the loss on a 2D plane, the current weights marked at the origin.

    Args:
        result: a 2D slice result (``coords`` = two 1-D tensors, ``loss[i, j]`` with ``i`` along direction 0).
        title: figure title.
        levels: number of contour levels.
        log_scale: contour ``log(loss)`` when every loss is positive (a basin with steep walls stays readable).
    """
    x, y = _np(result.coords[0]), _np(result.coords[1])
    z = finite_grid(result.loss)
    use_log = log_scale and bool((z > 0).all())
    fig = Figure(figsize=(5.6, 4.6), layout="constrained")
    ax = fig.subplots()
    # loss[i, j] has i along x; contourf wants rows along y.
    cs = ax.contourf(x, y, np.log(z).T if use_log else z.T, levels=levels, cmap="viridis")
    ax.contour(x, y, np.log(z).T if use_log else z.T, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="log loss" if use_log else "loss")
    ax.plot([0.0], [0.0], marker="*", color="w", markeredgecolor="k", markersize=12)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_title(title)
    ax.set_aspect("equal", adjustable="box")
    return fig


def slice_2d_surface_figure(result: Any, *, title: str = "2D loss surface", log_scale: bool = True) -> Figure:
    """The 2D loss slice as a shaded 3D surface (matplotlib's ``plot_surface``)."""
    x, y = _np(result.coords[0]), _np(result.coords[1])
    z = finite_grid(result.loss)
    use_log = log_scale and bool((z > 0).all())
    X, Y = np.meshgrid(x, y, indexing="ij")
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, np.log(z) if use_log else z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_zlabel("log loss" if use_log else "loss")
    ax.set_title(title)
    return fig


def density_figure(result: Any, *, title: str = "Hessian eigenvalue density (SLQ)") -> Figure:
    """The smoothed SLQ spectral density on a log axis, with the quadrature nodes as a rug."""
    grid, dens = _np(result.grid), _np(result.density)
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.subplots()
    floor = max(float(np.nanmax(dens)) * 1e-8, 1e-30) if np.isfinite(dens).any() else 1e-30
    ax.semilogy(grid, np.clip(dens, floor, None), color="C0")
    nodes = _np(result.nodes).ravel()
    if getattr(result, "mask", None) is not None:  # padded nodes of runs that ended early are no eigenvalues
        nodes = nodes[_np(result.mask).ravel().astype(bool)]
    ax.plot(nodes, np.full_like(nodes, floor), "|", color="C3", markersize=10, alpha=0.6)
    ax.axvline(0.0, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    neg = getattr(result, "negative_mass", float("nan"))
    ax.set_title(f"{title}\nnegative mass {neg:.3g}")
    return fig


def interpolation_figure(result: Any, *, title: str = "Linear interpolation") -> Figure:
    """Loss (and error) along ``(1-α)·a + α·b`` with the straight chord the barrier is measured from."""
    alphas, loss = _np(result.alphas), finite_grid(result.loss)
    error = getattr(result, "error", None)
    fig = Figure(figsize=(6.0, 3.8), layout="constrained")
    ax = fig.subplots()
    ax.plot(alphas, loss, "o-", color="C0", label="loss")
    ax.plot([alphas[0], alphas[-1]], [loss[0], loss[-1]], "--", color="C0", alpha=0.5, lw=1)
    ax.set_xlabel("α (0: reference, 1: current)")
    ax.set_ylabel("loss", color="C0")
    if error is not None:
        ax2 = ax.twinx()
        ax2.plot(alphas, _np(error), "s-", color="C1", label="error")
        ax2.set_ylabel("error", color="C1")
    barrier = getattr(result, "loss_barrier", float("nan"))
    ax.set_title(f"{title}\nloss barrier {barrier:.4g}")
    return fig


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


def layer_heatmap_figure(
    labels: Sequence[str],
    firings: Sequence[str],
    values: Sequence[Any],
    *,
    quantity: str = "trace",
    title: str = "Per-layer curvature",
) -> Figure:
    """A layers × firings heatmap of one per-layer quantity (rows: layers, columns: firings).

    Args:
        labels: layer names (rows).
        firings: column labels (e.g. ``"epoch 3"``).
        values: one sequence of per-layer values per firing (a column each).
        quantity: what the colour shows (for the colour bar).
        title: figure title.

    Colours are ``sign(v)·log10(1 + |v|)`` so that layers whose curvature differs by orders of magnitude
    (and the occasional negative trace) stay readable on one scale.
    """
    grid = np.stack([_np(v) for v in values], axis=1) if len(values) else np.zeros((len(labels), 0))
    shown = np.sign(grid) * np.log10(1.0 + np.abs(np.nan_to_num(grid)))
    fig = Figure(figsize=(max(4.0, 0.5 * len(firings) + 3.0), max(2.5, 0.35 * len(labels) + 1.5)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels=list(labels))
    step = max(1, len(firings) // 12)
    ax.set_xticks(range(0, len(firings), step), labels=list(firings)[::step], rotation=45, ha="right")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=f"sign·log10(1+|{quantity}|)")
    fig.tight_layout()
    return fig


def trajectory_plane_figure(
    result: Any, *, title: str = "Training path in its PCA plane", levels: int = 30, log_scale: bool = True
) -> Figure:
    """The projected training path over the loss contours of its top-2 PCA plane (Li et al. 2018).

    Args:
        result: a :class:`~ignite_landscape.TrajectoryPlaneResult` (``coords`` ``(m, 2)``, ``explained_variance``,
            ``slice`` with ``coords`` and ``loss``) or an object with the same attributes.
        title: figure title.
        levels: number of contour levels.
        log_scale: contour ``log(loss)`` when every loss is positive.
    """
    fig = Figure(figsize=(6.0, 4.8), layout="constrained")
    ax = fig.subplots()
    draw_trajectory_plane(fig, ax, result, levels=levels, log_scale=log_scale)
    ax.set_title(title)
    return fig


def draw_trajectory_plane(fig: Figure, ax: Any, result: Any, *, levels: int = 30, log_scale: bool = True) -> None:
    """Draw :func:`trajectory_plane_figure`'s content on ``ax`` of ``fig`` (the report's panels use it too)."""
    grid = result.slice
    x, y = _np(grid.coords[0]), _np(grid.coords[1])
    z = finite_grid(grid.loss)
    use_log = log_scale and bool((z > 0).all())
    zz = np.log(z).T if use_log else z.T  # loss[i, j] has i along x; contourf wants rows along y
    cs = ax.contourf(x, y, zz, levels=levels, cmap="viridis")
    ax.contour(x, y, zz, levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="log loss" if use_log else "loss")
    path = _np(result.coords).reshape(-1, 2)
    ax.plot(path[:, 0], path[:, 1], color="C3", lw=1.5, marker="o", markersize=3, label="path")
    ax.plot(path[:1, 0], path[:1, 1], marker="o", color="w", markeredgecolor="k", markersize=8, ls="", label="start")
    ax.plot([0.0], [0.0], marker="*", color="w", markeredgecolor="k", markersize=13, ls="", label="now")
    ratios = _np(result.explained_variance)
    ax.set_xlabel(f"PC1 ({100 * ratios[0]:.1f}% of the path's variance)")
    ax.set_ylabel(f"PC2 ({100 * ratios[1]:.1f}%)")
    note = f"explained variance: PC1 {ratios[0]:.3f}, PC2 {ratios[1]:.3f}"
    if ratios[0] + ratios[1] < 0.5:
        note += "\n(small: the plane shows little of the path)"
    ax.text(
        0.02, 0.98, note, transform=ax.transAxes, va="top", fontsize="small", bbox={"fc": "w", "alpha": 0.8, "lw": 0}
    )
    ax.legend(loc="lower right", fontsize="small")
