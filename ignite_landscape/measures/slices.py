"""1-D and 2-D slices of the loss landscape around the current weights.

The loss is evaluated at ``θ + a·d₀`` (1-D) or ``θ + a·d₀ + b·d₁`` (2-D) on a grid of coordinates
that always contains both ends of ``span`` and the centre ``0`` exactly, so the centre value is the
loss of the model itself. Points are evaluated functionally (``torch.func.functional_call`` on
tensors the session owns): the model is never copied nor written, and it is bit-identical afterwards.

With ``batch_points=N``, ``N`` grid points are evaluated in one call with ``torch.func.vmap`` over
the stacked weights, which keeps an accelerator busy with small models; where vmap cannot run the
model (dropout or batch statistics in ``model_mode="train"``, unsupported ops) it falls back to one
point at a time.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> from ignite_landscape.measures.directions import random_directions
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> probe = Probe((torch.randn(32, 4), torch.randint(0, 3, (32,))), torch.nn.functional.cross_entropy)
    >>> res = loss_slice(model, probe, random_directions(model, 2, seed=0), steps=5)
    >>> res.loss.shape, res.coords[0].tolist()
    (torch.Size([5, 5]), [-1.0, -0.5, 0.0, 0.5, 1.0])
    >>> res.center_loss == probe.evaluate(model).loss
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ignite_landscape.measures._definitions import num
from ignite_landscape.measures.directions import check_directions
from ignite_landscape.probe import Probe
from ignite_landscape.results import Curve, Result

__all__ = ["LossSliceResult", "SliceOptions", "loss_slice", "measure_loss_slice", "grid_coordinates"]

logger = logging.getLogger(__name__)


@dataclass
class LossSliceResult(Result):
    """Loss (and accuracy) on a line or a plane through the current weights.

    Attributes:
        coords: one float64 1-D tensor of coordinates per direction; each holds ``0.0`` exactly.
        loss: float64, shape ``(steps,)`` or ``(steps, steps)``; ``loss[i, j]`` is at
            ``θ + coords[0][i]·d₀ + coords[1][j]·d₁``.
        accuracy: same shape, top-1 accuracy, or ``None`` when the targets are not class labels.
        center_loss: the loss at the centre (the model's own weights).
        dims: 1 or 2.
        center_accuracy: accuracy at the centre, or ``None``.
        num_points: grid points evaluated.
        batched: whether the points were evaluated with vmap.
    """

    coords: list[torch.Tensor]
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    center_loss: float
    dims: int
    center_accuracy: float | None = None
    num_points: int = 0
    batched: bool = False

    @property
    def center_index(self) -> tuple[int, ...]:
        """Index of the centre point in :attr:`loss`."""
        return tuple(int((c == 0).nonzero()[0]) for c in self.coords)

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``center_loss``, ``min_loss``, ``max_loss`` (and ``center_accuracy``)."""
        finite = self.loss[torch.isfinite(self.loss)]
        out = {
            "center_loss": self.center_loss,
            "min_loss": float(finite.min()) if finite.numel() else float("nan"),
            "max_loss": float(finite.max()) if finite.numel() else float("nan"),
        }
        if self.center_accuracy is not None:
            out["center_accuracy"] = self.center_accuracy
        return out

    @property
    def kind(self) -> str:  # type: ignore[override]
        """``"slice1d"`` or ``"slice2d"``, by :attr:`dims`."""
        return "slice1d" if self.dims == 1 else "slice2d"

    def curves(self) -> dict[str, Curve]:
        """``slice``: a line over the coordinates (1D, drawn over earlier firings) or a grid (2D)."""
        extra = {} if self.accuracy is None else {"accuracy": self.accuracy}
        if self.dims == 1:
            curve = Curve("line", x=self.coords[0], y=self.loss, extra=extra, xlabel="α", ylabel="loss", overlay=True)
        else:
            curve = Curve("grid", x=self.coords[0], y=self.coords[1], z=self.loss, extra=extra, xlabel="α", ylabel="β")
        return {"slice": curve}

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, with the grid the slice covered."""
        spans = [f"[{num(float(c[0]))}, {num(float(c[-1]))}]" for c in self.coords]
        if self.dims == 1:
            where = f"the {self.loss.numel()} points θ + α·d of the 1D slice, α ∈ {spans[0]}"
        else:
            shape = "×".join(str(c.numel()) for c in self.coords)
            where = f"the {shape} points θ + α·d₀ + β·d₁ of the 2D slice, α ∈ {spans[0]}, β ∈ {spans[1]}"
        out = {
            "center_loss": "probe loss at the current weights θ (the slice's centre, coordinate 0)",
            "min_loss": f"smallest finite probe loss over {where}",
            "max_loss": f"largest finite probe loss over {where}",
            "slice": f"probe loss (and top-1 accuracy when the targets are class labels) over {where}",
        }
        if self.center_accuracy is not None:
            out["center_accuracy"] = "top-1 accuracy on the probe at the current weights θ"
        return out


def grid_coordinates(steps: int, span: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """``steps`` evenly spaced float64 coordinates over ``span``, both ends and ``0`` exact.

    Args:
        steps: number of coordinates (``≥ 2``).
        span: ``(low, high)`` with ``low ≤ 0 ≤ high``; ``0`` must fall on the grid (a symmetric span
            needs an odd ``steps``).

    Raises:
        ValueError: if ``steps < 2``, the span is empty or does not put 0 on the grid.

    Example:
        >>> grid_coordinates(5, (-0.5, 1.5)).tolist()
        [-0.5, 0.0, 0.5, 1.0, 1.5]
    """
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    if not isinstance(span, (tuple, list)) or len(span) != 2:
        raise TypeError(f"span must be a pair (low, high), got {span!r}")
    lo, hi = float(span[0]), float(span[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"span must be finite with low < high, got {span!r}")
    if not lo <= 0.0 <= hi:
        raise ValueError(f"span must contain 0 (the current weights), got {span!r}")
    spacing = (hi - lo) / (steps - 1)
    k = round(-lo / spacing)
    if abs(lo + k * spacing) > 1e-9 * spacing:
        raise ValueError(
            f"span={span!r} with steps={steps} does not put 0 on the grid; use an odd steps for a symmetric span"
        )
    # Built from the centre outwards so 0 is exact and both ends equal the span exactly.
    coords = torch.tensor([(i - k) * spacing for i in range(steps)], dtype=torch.float64)
    coords[k] = 0.0
    coords[0], coords[-1] = lo, hi
    return coords


@dataclass(frozen=True)
class SliceOptions:
    """The grid options of :func:`loss_slice`, validated once.

    The :class:`~ignite_landscape.LossSlice` handler builds the same object at construction, so a grid that
    cannot work is refused before training.

    Attributes:
        steps: grid points per direction (``≥ 2``; odd for a symmetric span).
        span: ``(low, high)`` with ``low ≤ 0 ≤ high`` and ``0`` on the grid.
        batch_points: grid points per vmap call (``None`` or 1: one at a time).

    Raises:
        TypeError: for a non-int ``steps``/``batch_points`` or a span that is not a pair of numbers.
        ValueError: for ``steps < 2``, an empty or non-finite span, a span whose grid misses 0, or
            ``batch_points < 1``.
    """

    steps: int = 21
    span: tuple[float, float] = (-1.0, 1.0)
    batch_points: int | None = None

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        span = self.span
        if not isinstance(span, (tuple, list)) or len(span) != 2:
            raise TypeError(f"span must be a pair (low, high), got {span!r}")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in span):
            raise TypeError(f"span must hold two numbers, got {span!r}")
        object.__setattr__(self, "span", (float(span[0]), float(span[1])))
        grid_coordinates(self.steps, self.span)  # the grid checks: steps, an ordered finite span, 0 on the grid
        if self.batch_points is not None:
            if isinstance(self.batch_points, bool) or not isinstance(self.batch_points, int):
                raise TypeError(f"batch_points must be an int or None, got {type(self.batch_points).__name__}")
            if self.batch_points < 1:
                raise ValueError(f"batch_points must be at least 1, got {self.batch_points}")

    def coords(self) -> torch.Tensor:
        """The grid along each direction (see :func:`grid_coordinates`)."""
        return grid_coordinates(self.steps, self.span)


def _as_direction_list(directions: object) -> list[Mapping[str, torch.Tensor]]:
    if isinstance(directions, Mapping):
        return [directions]
    if isinstance(directions, (list, tuple)):
        return list(directions)
    raise TypeError(
        f"directions must be a {{name: tensor}} dict or a list of one or two, got {type(directions).__name__}"
    )


def loss_slice(
    model: nn.Module,
    probe: Probe,
    directions: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
    steps: int = 21,
    span: tuple[float, float] = (-1.0, 1.0),
    *,
    batch_points: int | None = None,
) -> LossSliceResult:
    """Loss and accuracy on a 1-D line or 2-D plane through the current weights.

    Args:
        model: the model; evaluated functionally, never copied or written.
        probe: the fixed samples and loss.
        directions: one direction or a list of one or two (``{name: tensor}``, e.g. from
            :func:`random_directions`); they may span a subset of the parameters, the others stay put.
        steps: grid points per direction (odd for a symmetric span, so the centre is on the grid).
        span: coordinate range ``(low, high)`` along every direction.
        batch_points: evaluate this many grid points per vmap call (``None`` or 1: one at a time).

    Returns:
        A :class:`LossSliceResult`.

    Raises:
        ValueError: for more than two directions, directions of another model, bad ``steps``/``span``
            or ``batch_points < 1``.
    """
    return measure_loss_slice(model, probe, SliceOptions(steps, span, batch_points), directions=directions)


def measure_loss_slice(
    model: nn.Module,
    probe: Probe,
    options: SliceOptions,
    *,
    directions: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
) -> LossSliceResult:
    """:func:`loss_slice` on validated grid options (the :class:`~ignite_landscape.LossSlice` handler runs it).

    Deterministic, and the directions select the parameters: no ``seed`` or ``params``.

    Example:
        >>> model = torch.nn.Linear(3, 1)
        >>> probe = Probe((torch.randn(8, 3), torch.randn(8, 1)), torch.nn.MSELoss())
        >>> direction = {name: torch.ones_like(p) for name, p in model.named_parameters()}
        >>> measure_loss_slice(model, probe, SliceOptions(steps=5), directions=direction).loss.shape
        torch.Size([5])
    """
    dirs = _as_direction_list(directions)
    if not 1 <= len(dirs) <= 2:
        raise ValueError(f"directions must hold one or two directions, got {len(dirs)}")
    batch_points = options.batch_points
    coords = options.coords()
    names = check_directions(model, dirs)
    dims = len(dirs)
    grid = [coords.clone() for _ in range(dims)]

    with probe.session(model, names) as s:
        flat_dirs = [
            s.space.flatten({n: d[n].detach().to(s.dtype) for n in s.space.names}).to(s.theta.device) for d in dirs
        ]
        theta = s.theta
        # Row-major grid of coefficient tuples; i runs along direction 0.
        if dims == 1:
            points = [(float(a),) for a in coords]
        else:
            points = [(float(a), float(b)) for a in coords for b in coords]

        def point(c: tuple[float, ...]) -> torch.Tensor:
            p = theta
            for ci, d in zip(c, flat_dirs):
                if ci != 0.0:
                    p = p + ci * d
            return p

        losses = torch.empty(len(points), dtype=torch.float64)
        accs = torch.empty(len(points), dtype=torch.float64)
        classify = True
        batched = False
        done = 0
        if batch_points is not None and batch_points > 1:
            try:
                while done < len(points):
                    chunk = points[done : done + batch_points]
                    ev = s.evaluate_stacked(torch.stack([point(c) for c in chunk]))
                    losses[done : done + len(chunk)] = ev.loss
                    if ev.accuracy is None:
                        classify = False
                    else:
                        accs[done : done + len(chunk)] = ev.accuracy
                    done += len(chunk)
                batched = True
            except (RuntimeError, NotImplementedError, ValueError, TypeError) as e:
                logger.info("loss_slice: batched evaluation unavailable (%s); evaluating one point at a time", e)
                done = 0
                classify = True
        if done < len(points):
            rest = s.evaluate_many(_swept(theta, flat_dirs, points[done:]))
            losses[done:] = rest.loss
            if rest.accuracy is None:
                classify = False
            else:
                accs[done:] = rest.accuracy

    shape = (options.steps,) * dims
    loss = losses.view(shape)
    accuracy = accs.view(shape) if classify else None
    center = tuple(int((c == 0).nonzero()[0]) for c in grid)
    return LossSliceResult(
        coords=grid,
        loss=loss,
        accuracy=accuracy,
        center_loss=float(loss[center]),
        dims=dims,
        center_accuracy=float(accuracy[center]) if accuracy is not None else None,
        num_points=len(points),
        batched=batched,
    )


def _swept(
    theta: torch.Tensor, flat_dirs: list[torch.Tensor], points: list[tuple[float, ...]]
) -> Iterator[torch.Tensor]:
    """``θ + a·d₀ (+ b·d₁)`` for each coefficient tuple, one at a time; exactly ``θ`` at the centre."""
    for c in points:
        p = theta
        for ci, d in zip(c, flat_dirs):
            if ci != 0.0:
                p = torch.add(p, d, alpha=ci)
        yield p
