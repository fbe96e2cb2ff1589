"""The optimizer's path in the plane of its two principal directions, over the loss in that plane (Li et al. 2018).

Given weights recorded along training ``w_1 … w_m`` and the current weights ``θ`` (the centre):

* the directions ``d_1, d_2`` are the top-2 principal components of the differences ``w_i − θ``
  (:func:`~ignite_landscape.pca_directions`: centred, unit norm, sign fixed so the largest entry is positive);
* each recorded point projects to ``(a_i, b_i) = ((w_i − θ)·d_1, (w_i − θ)·d_2)``: weight-space distances,
  so the current weights sit exactly at the origin (a final recorded point equal to ``θ`` has
  coordinates ``(0, 0)``);
* ``explained_variance[k]`` is the share of the trajectory's variance along ``d_k``,
  ``Σ_i ((w_i − w̄)·d_k)² / Σ_i ‖w_i − w̄‖²``. Li et al. find the first two components explaining most of
  it for SGD paths, but the share can be small (a long noisy path, many epochs at a large step size):
  then the plane shows little of the path, and the figure says so with the numbers;
* the loss is evaluated on a grid in that plane (:func:`~ignite_landscape.loss_slice`) covering the
  projected path with a ``margin`` on each side, each axis in its own units.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(3, 2)
    >>> probe = Probe((torch.randn(16, 3), torch.randn(16, 2)), torch.nn.functional.mse_loss)
    >>> now = {n: p.detach().clone() for n, p in model.named_parameters()}
    >>> path = [{n: t + 0.1 * k * torch.randn_like(t) for n, t in now.items()} for k in (3, 2, 1)] + [now]
    >>> res = trajectory_plane(model, probe, path, steps=5)
    >>> res.coords[-1].tolist(), res.slice.loss.shape
    ([0.0, 0.0], torch.Size([5, 5]))
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ignite_landscape.measures.directions import pca_directions
from ignite_landscape.measures.slices import LossSliceResult, SliceOptions, measure_loss_slice
from ignite_landscape.params import ParamsArg, ParamSpace, unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.results import Curve, Result
from ignite_landscape.validation import check_positive

__all__ = ["TrajectoryPlaneResult", "TrajectoryOptions", "trajectory_plane", "measure_trajectory_plane"]


@dataclass(frozen=True)
class TrajectoryOptions:
    """The options of :func:`trajectory_plane`, validated once (the handler builds the same object).

    Attributes:
        steps: grid points per axis of the loss slice (odd, so the centre is on the grid).
        margin: extra room around the projected path, as a fraction of its extent along each axis.
        batch_points: grid points per vmap call (``None``: one at a time).

    Raises:
        TypeError, ValueError: for an even or too small ``steps``, a non-positive ``margin`` or a bad ``batch_points``.
    """

    steps: int = 21
    margin: float = 0.25
    batch_points: int | None = None

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        SliceOptions(self.steps, (-1.0, 1.0), self.batch_points)  # odd steps >= 3, batch_points >= 1
        object.__setattr__(self, "margin", check_positive("margin", self.margin))


@dataclass
class TrajectoryPlaneResult(Result):
    """The projected path, the explained variance of the two directions and the loss in their plane.

    Attributes:
        coords: float64 ``(m, 2)``: each recorded point's coordinates ``((w_i − θ)·d_1, (w_i − θ)·d_2)``.
        explained_variance: float64 ``(2,)``: the share of the path's variance along ``d_1`` and ``d_2``.
        slice: the 2D loss slice in the plane, centred at ``θ``; its ``coords`` are in the same units as
            :attr:`coords` (weight-space distance along each unit direction).
        iterations: the trainer iteration of each recorded point (``None`` when not known).
    """

    kind: ClassVar[str] = "trajectory"

    coords: torch.Tensor
    explained_variance: torch.Tensor
    slice: LossSliceResult
    iterations: list[int] | None = field(default=None)

    @property
    def num_points(self) -> int:
        """How many recorded points the plane was fitted to."""
        return int(self.coords.shape[0])

    def scalars(self) -> dict[str, float]:
        """``explained_variance_1``, ``explained_variance_2``, ``num_points``, ``center_loss``, ``min_loss``."""
        out = {
            "explained_variance_1": float(self.explained_variance[0]),
            "explained_variance_2": float(self.explained_variance[1]),
            "num_points": float(self.num_points),
            "center_loss": self.slice.center_loss,
        }
        finite = self.slice.loss[torch.isfinite(self.slice.loss)]
        out["min_loss"] = float(finite.min()) if finite.numel() else math.nan
        return out

    def curves(self) -> dict[str, Curve]:
        """``plane``: the loss over the plane with the projected path over it."""
        path = self.coords.detach().cpu().double().reshape(-1, 2)
        extra: dict[str, object] = {
            "path_x": path[:, 0],
            "path_y": path[:, 1],
            "explained_variance": self.explained_variance,
        }
        if self.iterations is not None:
            extra["iterations"] = [float(i) for i in self.iterations]
        plane = self.slice
        return {
            "plane": Curve(
                "path", x=plane.coords[0], y=plane.coords[1], z=plane.loss, extra=extra, xlabel="PC 1", ylabel="PC 2"
            )
        }

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, with the grid.

        How many recorded weights the plane was fitted to is the ``num_points`` scalar, not part of the sentences:
        they stay the same as the path grows, so a handler's history shares one copy of them.
        """
        pca = "of the recorded weights around θ (PCA of the path; how many: num_points)"
        grid = "×".join(str(c.numel()) for c in self.slice.coords)
        return {
            "explained_variance_1": f"share of the path's variance along the first principal direction d₁ {pca}",
            "explained_variance_2": f"share of the path's variance along the second principal direction d₂ {pca}",
            "num_points": "recorded weights the plane was fitted to",
            "center_loss": "probe loss at the current weights θ (the plane's centre)",
            "min_loss": f"smallest finite probe loss over the {grid} grid of the plane θ + a·d₁ + b·d₂",
            "plane": (
                f"probe loss over the {grid} grid of the plane θ + a·d₁ + b·d₂ (unit directions d₁, d₂ {pca}), "
                "with the path's projection ((w_i − θ)·d₁, (w_i − θ)·d₂) over it"
            ),
        }


def _weights(item: Mapping[str, torch.Tensor] | nn.Module, names: Sequence[str], what: str) -> dict[str, torch.Tensor]:
    if isinstance(item, nn.Module):
        item = dict(unwrap_model(item).named_parameters())
    if not isinstance(item, Mapping):
        raise TypeError(f"{what} must be a {{name: tensor}} mapping or a model, got {type(item).__name__}")
    missing = [n for n in names if n not in item]
    if missing:
        raise ValueError(f"{what} lacks parameters {missing}")
    return {n: item[n].detach() for n in names}


def trajectory_plane(
    model: nn.Module,
    probe: Probe,
    trajectory: Sequence[Mapping[str, torch.Tensor] | nn.Module],
    *,
    steps: int = 21,
    margin: float = 0.25,
    batch_points: int | None = None,
    params: ParamsArg = None,
    iterations: Sequence[int] | None = None,
) -> TrajectoryPlaneResult:
    """Project a recorded path onto its top-2 PCA plane through the current weights and slice the loss there.

    Args:
        model: the model at the centre (usually the final weights, often ``trajectory[-1]`` itself); never
            modified.
        probe: the fixed samples and loss of the slice.
        trajectory: the recorded weights, oldest first, as ``{name: tensor}`` dicts or models (at least 3).
        steps: grid points per axis (odd).
        margin: room around the path as a fraction of its extent along each axis.
        batch_points: grid points per vmap call.
        params: the parameters the path lives in (default: every trainable parameter).
        iterations: a label per recorded point (the trainer iteration), kept in the result.

    Returns:
        A :class:`TrajectoryPlaneResult`.

    Raises:
        TypeError, ValueError: for bad options, fewer than 3 points, points lacking a parameter or of another
            shape, a path spanning fewer than 2 directions, or ``iterations`` of another length.
    """
    options = TrajectoryOptions(steps, margin, batch_points)
    return measure_trajectory_plane(model, probe, options, trajectory=trajectory, params=params, iterations=iterations)


def measure_trajectory_plane(
    model: nn.Module,
    probe: Probe,
    options: TrajectoryOptions,
    *,
    trajectory: Sequence[Mapping[str, torch.Tensor] | nn.Module],
    params: ParamsArg = None,
    iterations: Sequence[int] | None = None,
) -> TrajectoryPlaneResult:
    """:func:`trajectory_plane` on validated options (the :class:`~ignite_landscape.TrajectoryPlane` handler runs it).

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> probe = Probe((torch.randn(8, 3), torch.randn(8, 1)), torch.nn.MSELoss())
        >>> path = [{n: p.detach() + torch.randn_like(p) for n, p in model.named_parameters()} for _ in range(4)]
        >>> res = measure_trajectory_plane(model, probe, TrajectoryOptions(steps=5), trajectory=path)
        >>> res.coords.shape, res.slice.loss.shape
        (torch.Size([4, 2]), torch.Size([5, 5]))
    """
    space = ParamSpace.from_model(model, params)
    if isinstance(trajectory, (Mapping, nn.Module)) or not isinstance(trajectory, Sequence):
        raise TypeError("trajectory must be a list of {name: tensor} dicts or models")
    if len(trajectory) < 3:
        raise ValueError(f"trajectory needs at least 3 recorded points for a plane, got {len(trajectory)}")
    if iterations is not None and len(iterations) != len(trajectory):
        raise ValueError(f"iterations has {len(iterations)} entries for {len(trajectory)} points")
    names = list(space.names)
    centre = _weights(model, names, "model")
    points = [_weights(w, names, f"trajectory[{i}]") for i, w in enumerate(trajectory)]
    for i, w in enumerate(points):
        try:
            space.flatten(w)
        except ValueError as e:
            raise ValueError(f"trajectory[{i}]: {e}") from None
    directions = pca_directions(points, 2, reference=centre, params=names)
    theta = space.flatten(centre).double().cpu()
    diffs = torch.stack([space.flatten(w).double().cpu() - theta for w in points])
    basis = torch.stack([space.flatten(d).double().cpu() for d in directions], dim=1)  # (P, 2), orthonormal
    coords = diffs @ basis
    centred = diffs - diffs.mean(dim=0, keepdim=True)
    explained = (centred @ basis).pow(2).sum(dim=0) / centred.pow(2).sum()
    # Each axis spans the path's extent on that axis plus the margin; the slice runs on [-1, 1] along the
    # scaled directions and its coordinates are converted back to distances.
    extent = coords.abs().max(dim=0).values * (1.0 + options.margin)
    extent = torch.where(extent > 0, extent, extent.max())
    scaled = [{n: t * float(r) for n, t in d.items()} for d, r in zip(directions, extent)]
    grid = SliceOptions(options.steps, (-1.0, 1.0), options.batch_points)
    result = measure_loss_slice(model, probe, grid, directions=scaled)
    result.coords = [c * float(r) for c, r in zip(result.coords, extent)]
    return TrajectoryPlaneResult(
        coords=coords,
        explained_variance=explained,
        slice=result,
        iterations=None if iterations is None else [int(i) for i in iterations],
    )
