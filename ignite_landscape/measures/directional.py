"""Curvature along a direction, and the batch sharpness SGD meets (Andreyev & Beneventano 2024).

``directional_curvature`` is the Rayleigh quotient ``dᵀCd/‖d‖²`` of the chosen curvature matrix ``C``
along the full probe gradient, the last optimizer update, or any direction: one curvature-vector
product. Along the gradient it is the curvature that a gradient step actually meets, which for
gradient descent with step size η must stay below ``2/η`` for the loss to decrease.

``batch_sharpness`` is the same quotient for mini-batch losses: the mean over mini-batches ``B`` (of the
trainer's batch size, drawn from the probe with a private seeded generator) of
``g_Bᵀ H_B g_B / ‖g_B‖²``, where ``g_B`` and ``H_B`` are the gradient and Hessian of the loss of ``B``
alone. Andreyev & Beneventano ("Edge of stochastic stability", 2024) find that SGD trains with this
quantity hovering at ``2/η`` — not λ_max of the full-batch Hessian. Its standard error over the
mini-batches is reported.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(3, 1).double()
    >>> x = torch.randn(32, 3, dtype=torch.float64)
    >>> probe = Probe((x, torch.zeros(32, 1, dtype=torch.float64)), torch.nn.functional.mse_loss)
    >>> res = directional_curvature(model, probe, direction={"weight": torch.ones(1, 3, dtype=torch.float64),
    ...                                                     "bias": torch.zeros(1, dtype=torch.float64)})
    >>> abs(res.value - float(2 * (x.sum(1) ** 2).mean() / 3)) < 1e-10  # Hessian of the MSE: 2·XᵀX/N
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ignite_landscape.curvature import check_curvature, curvature_operator, prediction
from ignite_landscape.measures._definitions import curvature_name, num, products
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe
from ignite_landscape.results import Result
from ignite_landscape.samples import num_rows, take_rows
from ignite_landscape.validation import check_int, check_positive

__all__ = [
    "DIRECTIONS",
    "DirectionalCurvatureResult",
    "DirectionalOptions",
    "BatchSharpnessOptions",
    "BatchSharpnessResult",
    "directional_curvature",
    "batch_sharpness",
    "measure_batch_sharpness",
    "measure_directional_curvature",
    "minibatch_indices",
]

DIRECTIONS = ("gradient", "update")


@dataclass
class DirectionalCurvatureResult(Result):
    """The curvature ``dᵀCd/‖d‖²`` along one direction.

    Attributes:
        value: ``dᵀCd/‖d‖²`` (NaN when the direction is zero, e.g. a vanishing gradient).
        direction: ``"gradient"``, ``"update"`` or ``"custom"``.
        direction_norm: ``‖d‖``.
        curvature: the matrix ``C`` (``"hessian"``, ``"ggn"``, ``"fisher"``, ``"empirical_fisher"``).
        num_hvps: curvature-vector products used (1, or 0 for a zero direction).
    """

    kind = "directional"

    value: float
    direction: str
    direction_norm: float
    curvature: str
    num_hvps: int

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``value``, ``direction_norm``, ``num_hvps``."""
        return {"value": self.value, "direction_norm": self.direction_norm, "num_hvps": float(self.num_hvps)}

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key, with the matrix and the direction."""
        d = {
            "gradient": "the probe gradient",
            "update": "the last optimizer update θ − θ_prev",
        }.get(self.direction, "a fixed direction given by the user")
        return {
            "value": (
                f"Rayleigh quotient dᵀCd/‖d‖² along d = {d}, C the {curvature_name(self.curvature)} of the probe "
                "loss; NaN for a zero direction"
            ),
            "direction_norm": f"‖d‖, the norm of {d}",
            "num_hvps": f"{products(self.curvature)} used (1, or 0 for a zero direction)",
        }


def _as_flat(name: str, value: Any, space: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, Mapping):
        flat = space.flatten(value)
    elif isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.numel() != space.numel:
            raise ValueError(f"{name} must be a flat vector of {space.numel} entries, got shape {tuple(value.shape)}")
        flat = value
    else:
        raise TypeError(
            f"{name} must be a {{parameter name: tensor}} dict or a flat tensor, got {type(value).__name__}"
        )
    flat = flat.detach().to(dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} holds non-finite entries")
    return flat


@dataclass(frozen=True)
class DirectionalOptions:
    """The options of :func:`directional_curvature`, validated once.

    The :class:`~ignite_landscape.DirectionalCurvature` handler builds the same object at construction.

    Attributes:
        direction: ``"gradient"`` (the probe gradient), ``"update"`` (the last optimizer step) or a fixed
            direction, a ``{parameter name: tensor}`` dict or a flat tensor.
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.

    Raises:
        TypeError, ValueError: for an unknown direction kind or curvature (naming it).
    """

    direction: str | Mapping[str, torch.Tensor] | torch.Tensor = "gradient"
    curvature: str = "hessian"

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        check_curvature(self.curvature)
        direction = self.direction
        if isinstance(direction, str):
            if direction not in DIRECTIONS:
                raise ValueError(f"direction must be one of {DIRECTIONS} or a dict/tensor, got {direction!r}")
        elif not isinstance(direction, (Mapping, torch.Tensor)):
            raise TypeError(
                f"direction must be 'gradient', 'update', a dict or a tensor, got {type(direction).__name__}"
            )

    def check_space(self, space: Any) -> None:
        """Raise if a fixed direction does not fit the selected parameters."""
        if isinstance(self.direction, Mapping):
            space.flatten(self.direction)  # raises for missing parameters or wrong shapes
        elif isinstance(self.direction, torch.Tensor) and self.direction.numel() != space.numel:
            raise ValueError(f"direction has {self.direction.numel()} entries, the parameters {space.numel}")


@dataclass(frozen=True)
class BatchSharpnessOptions:
    """The options of :func:`batch_sharpness`, validated once.

    The :class:`~ignite_landscape.BatchSharpness` handler builds the same object at construction.

    Attributes:
        batch_size: the trainer's batch size (the handler reads the trainer's DataLoader for ``None``).
        num_batches: mini-batches drawn (at least 2, for a standard error).
        lr: the step size for the ``2/η`` threshold, or ``None``.

    Raises:
        TypeError, ValueError: for a non-int or too small ``batch_size``/``num_batches`` or ``lr ≤ 0``.
    """

    batch_size: int | None = None
    num_batches: int = 10
    lr: float | None = None

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)
        check_int("num_batches", self.num_batches, 2)
        if self.lr is not None:
            object.__setattr__(self, "lr", check_positive("lr", self.lr))

    def check_probe(self, probe: Probe) -> None:
        """Raise if ``batch_size`` is above the probe's samples."""
        if self.batch_size is not None and self.batch_size > probe.num_samples:
            raise ValueError(
                f"batch_size must be at most the probe's {probe.num_samples} samples, got {self.batch_size}"
            )


def directional_curvature(
    model: nn.Module,
    probe: Probe,
    direction: str | Mapping[str, torch.Tensor] | torch.Tensor = "gradient",
    *,
    previous: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
    curvature: str = "hessian",
    params: ParamsArg = None,
    seed: int = 0,
) -> DirectionalCurvatureResult:
    """The curvature ``dᵀCd/‖d‖²`` of the probe objective along ``d``.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        direction: ``"gradient"`` (the probe gradient at the current weights), ``"update"`` (the current
            weights minus ``previous``: the last optimizer step when ``previous`` are the weights before it),
            or a direction as a ``{parameter name: tensor}`` dict or a flat tensor.
        previous: the weights before the update (dict or flat), needed for ``direction="update"``.
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
        params: restrict to a subset of parameters (the direction lives in that subspace).
        seed: seed of the Fisher's sampled labels.

    Raises:
        ValueError: for an unknown direction or curvature, ``"update"`` without ``previous``, a direction of
            the wrong shape, a non-finite direction, or an explicitly given zero direction.
        TypeError: if ``direction`` or ``previous`` is of the wrong type.
    """
    options = DirectionalOptions(direction, curvature)
    return measure_directional_curvature(model, probe, options, seed, params, previous=previous)


def measure_directional_curvature(
    model: nn.Module,
    probe: Probe,
    options: DirectionalOptions,
    seed: int = 0,
    params: ParamsArg = None,
    *,
    previous: Mapping[str, torch.Tensor] | torch.Tensor | None = None,
) -> DirectionalCurvatureResult:
    """:func:`directional_curvature` on validated options (``previous`` as there); the handler runs it.

    Example:
        >>> probe = Probe((torch.randn(16, 3).double(), torch.randn(16, 1).double()), torch.nn.MSELoss())
        >>> res = measure_directional_curvature(torch.nn.Linear(3, 1).double(), probe, DirectionalOptions("gradient"))
        >>> res.value >= 0  # the Hessian of a least-squares loss is positive semi-definite
        True
    """
    direction, curvature = options.direction, options.curvature
    if direction == "update" and previous is None:
        raise ValueError("direction='update' needs previous= (the weights before the update)")
    with probe.session(model, params) as s:
        theta = s.theta
        if direction == "gradient":
            d = s.grad()
            kind = "gradient"
        elif direction == "update":
            d = theta - _as_flat("previous", previous, s.space, theta)
            kind = "update"
        else:
            d = _as_flat("direction", direction, s.space, theta)
            kind = "custom"
            if not bool(d.any()):
                raise ValueError("direction is zero: the curvature along it is undefined")
        norm = float(torch.linalg.vector_norm(d.double()))
        if norm == 0.0 or not math.isfinite(norm):
            return DirectionalCurvatureResult(float("nan"), kind, norm, curvature, 0)
        u = d / norm
        matvec = curvature_operator(s, curvature, seed)
        before = s.num_hvps
        value = float(torch.dot(u.double(), matvec(u).double()))
        return DirectionalCurvatureResult(value, kind, norm, curvature, s.num_hvps - before)


@dataclass
class BatchSharpnessResult(Result):
    """Mean curvature of mini-batch losses along their own gradients.

    Attributes:
        value: mean over the mini-batches of ``g_Bᵀ H_B g_B / ‖g_B‖²``.
        stderr: its standard error (sample standard deviation over √num_batches).
        values: the quotient of each mini-batch (NaN for a batch whose gradient vanishes; left out of the mean).
        batch_size: samples per mini-batch.
        num_batches: mini-batches drawn.
        num_hvps: Hessian-vector products (one per mini-batch).
        lr: the step size the threshold refers to, if given.
    """

    kind = "batch_sharpness"

    value: float
    stderr: float
    values: list[float]
    batch_size: int
    num_batches: int
    num_hvps: int
    lr: float | None = None

    @property
    def threshold(self) -> float:
        """The stability threshold ``2/η`` (NaN without ``lr``)."""
        return float("nan") if self.lr is None else 2.0 / self.lr

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``value``, ``stderr``, ``batch_size``, ``num_batches`` (and ``threshold``, ``ratio``)."""
        out = {
            "value": self.value,
            "stderr": self.stderr,
            "batch_size": float(self.batch_size),
            "num_batches": float(self.num_batches),
        }
        if self.lr is not None:
            out["threshold"] = self.threshold
            out["ratio"] = self.value / self.threshold
        return out

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key, with the batch size, the number of batches and the step size."""
        out = {
            "value": (
                f"mean over {self.num_batches} mini-batches B of {self.batch_size} probe samples of "
                "g_Bᵀ H_B g_B/‖g_B‖², the curvature of each batch's loss along its own gradient (Andreyev & "
                "Beneventano 2024); batches whose gradient vanishes are left out"
            ),
            "stderr": f"standard error of value: the standard deviation over the mini-batches / √{self.num_batches}",
            "batch_size": "samples per mini-batch",
            "num_batches": "mini-batches drawn from the probe",
        }
        if self.lr is not None:
            out["threshold"] = f"2/η with η = {num(self.lr)}: the stability threshold of a step of size η"
            out["ratio"] = "value / threshold: above 1, a step of size η along a batch's gradient overshoots"
        return out


def minibatch_indices(num_samples: int, batch_size: int, num_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """The probe rows of each mini-batch :func:`batch_sharpness` draws.

    Consecutive chunks of random permutations of ``range(num_samples)`` (a fresh permutation whenever one
    runs out), from a private generator seeded with ``seed``: rows within a mini-batch never repeat, and
    the same seed gives the same mini-batches every time.
    """
    if batch_size > num_samples:
        raise ValueError(f"batch_size must be at most the probe's {num_samples} samples, got {batch_size}")
    g = torch.Generator().manual_seed(int(seed))
    out: list[torch.Tensor] = []
    perm = torch.randperm(num_samples, generator=g)
    pos = 0
    while len(out) < num_batches:
        if pos + batch_size > num_samples:
            perm, pos = torch.randperm(num_samples, generator=g), 0
        out.append(perm[pos : pos + batch_size])
        pos += batch_size
    return out


def batch_sharpness(
    model: nn.Module,
    probe: Probe,
    batch_size: int,
    *,
    num_batches: int = 10,
    lr: float | None = None,
    params: ParamsArg = None,
    seed: int = 0,
) -> BatchSharpnessResult:
    """Mean over mini-batches of the mini-batch loss's curvature along the mini-batch gradient.

    Each mini-batch ``B`` (rows from :func:`minibatch_indices`) is evaluated as one batch with the probe's
    ``loss_fn`` — the loss the trainer differentiates on a batch of that size — and contributes
    ``g_Bᵀ H_B g_B / ‖g_B‖²`` (one forward, one backward, one double backward).

    Args:
        model: the model; left exactly as it was.
        probe: the samples the mini-batches are drawn from.
        batch_size: the trainer's batch size.
        num_batches: mini-batches drawn (at least 2, for a standard error).
        lr: the step size; adds ``threshold = 2/lr`` and ``ratio = value/threshold`` to the scalars.
        params: restrict to a subset of parameters.
        seed: seed of the mini-batch draw.

    Raises:
        TypeError: if ``batch_size`` or ``num_batches`` is not an int.
        ValueError: if ``batch_size`` is not in ``[1, probe.num_samples]``, ``num_batches < 2`` or ``lr ≤ 0``.
    """
    check_int("batch_size", batch_size, 1)  # the options allow None (the handler's "the trainer's"), not here
    return measure_batch_sharpness(model, probe, BatchSharpnessOptions(batch_size, num_batches, lr), seed, params)


def measure_batch_sharpness(
    model: nn.Module, probe: Probe, options: BatchSharpnessOptions, seed: int = 0, params: ParamsArg = None
) -> BatchSharpnessResult:
    """:func:`batch_sharpness` on validated options with a ``batch_size`` (the handler reads the trainer's).

    Example:
        >>> probe = Probe((torch.randn(16, 3).double(), torch.randn(16, 1).double()), torch.nn.MSELoss())
        >>> res = measure_batch_sharpness(torch.nn.Linear(3, 1).double(), probe, BatchSharpnessOptions(4, 3))
        >>> len(res.values), res.value >= 0
        (3, True)
    """
    batch_size, num_batches, lr = options.batch_size, options.num_batches, options.lr
    if batch_size is None:
        raise ValueError("options.batch_size is None: give the batch size (the handler reads the trainer's)")
    batches = minibatch_indices(num_rows(probe.targets), batch_size, num_batches, seed)
    values: list[float] = []
    with probe.session(model, params) as s:
        for j, idx in enumerate(batches):
            x, y = take_rows(probe.inputs, idx), take_rows(probe.targets, idx)
            leaves = [t.detach().requires_grad_(True) for t in s.base]
            with torch.enable_grad():
                loss = probe.loss_fn(prediction(s, s.forward(x, leaves, j)), y)
                probe.check_loss(loss)
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                pairs = [(g, p) for g, p in zip(grads, leaves) if g is not None]
                g_flat = torch.cat([g.reshape(-1) for g, _ in pairs]) if pairs else torch.zeros(0)
                sq = float(torch.dot(g_flat.detach().double(), g_flat.detach().double()))
                if sq == 0.0 or not g_flat.requires_grad:
                    values.append(float("nan") if sq == 0.0 else 0.0)
                    continue
                dot = torch.dot(g_flat, g_flat.detach())
                hg = torch.autograd.grad(dot, [p for _, p in pairs], allow_unused=True)
            hg_flat = torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1) for h, (_, p) in zip(hg, pairs)])
            values.append(float(torch.dot(g_flat.detach().double(), hg_flat.double())) / sq)
    finite = torch.tensor([v for v in values if math.isfinite(v)], dtype=torch.float64)
    mean = float(finite.mean()) if finite.numel() else float("nan")
    stderr = float(finite.std(unbiased=True) / math.sqrt(finite.numel())) if finite.numel() > 1 else float("nan")
    return BatchSharpnessResult(
        value=mean,
        stderr=stderr,
        values=values,
        batch_size=batch_size,
        num_batches=num_batches,
        num_hvps=len(batches),
        lr=None if lr is None else float(lr),
    )
