"""Directions in weight space for slices: random (normalized), Hessian eigenvectors, trajectory PCA.

A direction is plain data, ``dict[str, Tensor]`` keyed by parameter name, so it can be saved with
``torch.save`` (or in a handler's ``state_dict``) and the same plane sliced at every epoch.

Filter normalization (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): a Gaussian
direction ``d`` is rescaled filter by filter, ``d[i] ← d[i]·‖w[i]‖/‖d[i]‖``, where ``i`` runs over the
first dimension of each weight tensor (the output channels of a convolution, the output neurons of
a linear layer). One-dimensional tensors (biases, BatchNorm scales and shifts) are zeroed when
``ignore_bias_bn=True`` and set to the weights themselves otherwise, exactly as in their code. The
result is invariant to the rescaling symmetries of ReLU networks: scaling a layer by ``c`` and the
next by ``1/c`` scales the direction the same way, so a filter-normalized slice does not change.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> d1, d2 = random_directions(model, 2, normalization="filter", seed=0)
    >>> w = model[0].weight
    >>> bool(torch.allclose(d1["0.weight"].norm(dim=1), w.norm(dim=1).detach()))
    True
    >>> float(d1["0.bias"].abs().sum())
    0.0
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ignite_landscape.linalg import generator
from ignite_landscape.params import ParamsArg, ParamSpace, unwrap_model
from ignite_landscape.probe import Probe

__all__ = [
    "Direction",
    "NORMALIZATIONS",
    "random_directions",
    "eigenvector_directions",
    "pca_directions",
    "normalize_direction",
    "check_directions",
]

logger = logging.getLogger(__name__)

Direction = dict[str, torch.Tensor]
NORMALIZATIONS = ("filter", "layer", "none")

# Buffers of normalization layers that appear in state dicts but are not weights to move along.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int, got {type(count).__name__}")
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")


def normalize_direction(
    direction: Mapping[str, torch.Tensor],
    weights: Mapping[str, torch.Tensor],
    normalization: str = "filter",
    ignore_bias_bn: bool = True,
) -> Direction:
    """Rescale a direction to the scale of the weights (a new dict; the inputs are not modified).

    Args:
        direction: ``{name: tensor}``.
        weights: the weights it will be added to, with the same names and shapes.
        normalization: ``"filter"`` (per slice along dim 0, Li et al. 2018), ``"layer"`` (per tensor)
            or ``"none"`` (unchanged).
        ignore_bias_bn: for ``"filter"``/``"layer"``, zero 1-D tensors (biases, BatchNorm); when
            ``False`` they are set to the weights. With ``"none"`` and ``True`` they are zeroed too.

    Returns:
        The normalized direction.

    Example:
        >>> w = {"w": torch.ones(2, 3)}
        >>> normalize_direction({"w": torch.tensor([[1.0, 0, 0], [0, 2.0, 0]])}, w)["w"].norm(dim=1)
        tensor([1.7321, 1.7321])
    """
    _check_normalization(normalization)
    out: Direction = {}
    for name, d in direction.items():
        if name not in weights:
            raise ValueError(f"direction has a tensor {name!r} that the weights lack")
        w = weights[name].detach()
        if d.shape != w.shape:
            raise ValueError(f"direction[{name!r}] has shape {tuple(d.shape)}, the weight {tuple(w.shape)}")
        d = d.detach().to(device=w.device, dtype=w.dtype)
        if d.dim() <= 1:
            if ignore_bias_bn:
                out[name] = torch.zeros_like(w)
            elif normalization == "none":
                out[name] = d.clone()
            else:
                out[name] = w.clone()
            continue
        if normalization == "filter":
            d_norm = d.flatten(1).norm(dim=1)
            w_norm = w.flatten(1).norm(dim=1)
            scale = torch.where(d_norm > 0, w_norm / torch.where(d_norm > 0, d_norm, 1), torch.zeros_like(w_norm))
            out[name] = d * scale.view(-1, *([1] * (d.dim() - 1)))
        elif normalization == "layer":
            d_norm = d.norm()
            out[name] = d * (w.norm() / d_norm) if d_norm > 0 else torch.zeros_like(d)
        else:
            out[name] = d.clone()
    return out


def random_directions(
    model: nn.Module,
    count: int = 2,
    normalization: str = "filter",
    ignore_bias_bn: bool = True,
    seed: int = 0,
    params: ParamsArg = None,
) -> list[Direction]:
    """Gaussian directions, normalized to the model's weights.

    The draws come from a private generator seeded with ``seed`` (the global RNG is untouched), on
    the CPU in float64, so a seed gives the same directions on every device.

    Args:
        model: the model whose current weights set the scale.
        count: how many directions.
        normalization: ``"filter"``, ``"layer"`` or ``"none"`` (see :func:`normalize_direction`).
        ignore_bias_bn: zero the 1-D tensors (biases, BatchNorm) instead of setting them to the weights.
        seed: seed of the draws.
        params: which parameters the directions span (see :meth:`ParamSpace.from_model`).

    Returns:
        ``count`` directions, each ``{name: tensor}`` on the model's device and dtype.

    Raises:
        ValueError: for an unknown ``normalization`` or ``count < 1``.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> [sorted(d) for d in random_directions(model, 1, seed=1)]
        [['bias', 'weight']]
    """
    _check_count(count)
    _check_normalization(normalization)
    model = unwrap_model(model)
    space = ParamSpace.from_model(model, params)
    weights = {n: t.detach() for n, t in zip(space.names, space.tensors(model))}
    g = generator(seed)
    out = []
    for _ in range(count):
        raw = {n: torch.randn(w.shape, generator=g, dtype=torch.float64) for n, w in weights.items()}
        out.append(normalize_direction(raw, weights, normalization, ignore_bias_bn))
    return out


def eigenvector_directions(
    model: nn.Module,
    probe: Probe,
    count: int = 2,
    seed: int = 0,
    params: ParamsArg = None,
    normalization: str = "none",
    *,
    ignore_bias_bn: bool = False,
    tol: float = 1e-4,
) -> list[Direction]:
    """Directions along the top Hessian eigenvectors of the probe loss.

    With ``normalization="none"`` (the default) each direction is a unit vector in the space of the
    selected parameters, so slice coordinates are distances in weight space and the loss along
    direction ``i`` curves as ``λ_i t²/2`` near a minimum.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        count: how many eigenvectors (largest eigenvalues first).
        seed: seed of the Lanczos start vector.
        params: which parameters span the space.
        normalization: optionally rescale as :func:`normalize_direction` does.
        ignore_bias_bn: passed to :func:`normalize_direction` (default keeps the 1-D entries).
        tol: relative residual tolerance of Lanczos.

    Returns:
        ``count`` directions, ``{name: tensor}``.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> probe = Probe((torch.randn(16, 3), torch.randint(0, 2, (16,))), torch.nn.functional.cross_entropy)
        >>> len(eigenvector_directions(model, probe, count=2))
        2
    """
    from ignite_landscape.measures.spectrum import hessian_eigenvalues

    _check_count(count)
    _check_normalization(normalization)
    res = hessian_eigenvalues(model, probe, k=count, tol=tol, params=params, seed=seed, return_eigenvectors=True)
    model = unwrap_model(model)
    weights = {n: t.detach() for n, t in zip(res.space.names, res.space.tensors(model))}
    out = []
    for i in range(count):
        d = {n: t.clone() for n, t in res.eigenvector(i).items()}
        if normalization != "none" or ignore_bias_bn:
            d = normalize_direction(d, weights, normalization, ignore_bias_bn)
        out.append(d)
    return out


def _weights_of(item: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(item, nn.Module):
        return {n: p.detach() for n, p in unwrap_model(item).named_parameters()}
    if isinstance(item, Mapping):
        return {
            n: t.detach()
            for n, t in item.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not n.endswith(_BUFFER_SUFFIXES)
        }
    raise TypeError(f"{what} must be a state dict or an nn.Module, got {type(item).__name__}")


def pca_directions(
    trajectory: Sequence[Mapping[str, torch.Tensor] | nn.Module],
    count: int = 2,
    reference: Mapping[str, torch.Tensor] | nn.Module | None = None,
    *,
    params: Sequence[str] | None = None,
) -> list[Direction]:
    """Principal directions of an optimizer's path through weight space (Li et al. 2018, §7).

    Each checkpoint ``w_i`` becomes the difference ``w_i − w_ref`` from the reference weights
    (default: the last checkpoint, the final weights, as Li et al.); the differences are centred and
    the directions are their first ``count`` principal components (right singular vectors), as
    scikit-learn's PCA computes them in Li et al.'s code. Each direction has unit norm over the
    selected tensors, so slice coordinates are weight-space distances and the trajectory projects
    onto the plane by dot products. The sign is fixed so that the largest entry is positive.

    Args:
        trajectory: checkpoints as state dicts or models. From a state dict, the floating-point
            entries except BatchNorm running statistics are used (or exactly ``params``).
        count: how many components (at most ``len(trajectory) − 1``).
        reference: the weights the differences are taken from (default: ``trajectory[-1]``).
        params: names of the tensors to use (default: see ``trajectory``).

    Returns:
        ``count`` unit directions ``{name: tensor}`` (dtype and device of the reference).

    Raises:
        ValueError: if the checkpoints disagree in names or shapes, or are too few for ``count``.

    Example:
        >>> traj = [{"w": torch.tensor([float(i), 2.0 * i, 0.0])} for i in range(4)]
        >>> pca_directions(traj, count=1)[0]["w"]
        tensor([0.4472, 0.8944, 0.0000])
    """
    _check_count(count)
    if isinstance(trajectory, (Mapping, nn.Module)) or not isinstance(trajectory, Sequence):
        raise TypeError("trajectory must be a list of state dicts or models")
    if len(trajectory) < count + 1:
        raise ValueError(f"trajectory needs at least count + 1 = {count + 1} checkpoints, got {len(trajectory)}")
    ref = _weights_of(reference if reference is not None else trajectory[-1], "reference")
    names = list(params) if params is not None else list(ref)
    missing = [n for n in names if n not in ref]
    if missing:
        raise ValueError(f"reference lacks {missing}")
    if not names:
        raise ValueError("trajectory: no floating-point weights to use")
    rows = []
    for i, item in enumerate(trajectory):
        w = _weights_of(item, f"trajectory[{i}]")
        for n in names:
            if n not in w:
                raise ValueError(f"trajectory[{i}] lacks {n!r}")
            if w[n].shape != ref[n].shape:
                raise ValueError(
                    f"trajectory[{i}][{n!r}] has shape {tuple(w[n].shape)}, expected {tuple(ref[n].shape)}"
                )
        rows.append(torch.cat([(w[n].double().cpu() - ref[n].double().cpu()).reshape(-1) for n in names]))
    m = torch.stack(rows)
    m = m - m.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    if s.numel() < count or float(s[count - 1]) <= 1e-12 * max(float(s[0]), 1e-300):
        raise ValueError(f"trajectory spans fewer than count={count} independent directions")
    explained = (s**2 / (s**2).sum())[:count]
    logger.debug("pca_directions: explained variance ratio %s", explained.tolist())
    sizes = [ref[n].numel() for n in names]
    out = []
    for k in range(count):
        v = vh[k]
        if v[v.abs().argmax()] < 0:
            v = -v
        chunks = v.split(sizes)
        out.append(
            {n: c.view(ref[n].shape).to(dtype=ref[n].dtype, device=ref[n].device) for n, c in zip(names, chunks)}
        )
    return out


def check_directions(
    model: nn.Module, directions: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]]
) -> list[str]:
    """Check that directions belong to ``model``; return the parameter names they span, in model order.

    Args:
        model: the model.
        directions: one direction or a list of them.

    Raises:
        TypeError: if a direction is not a ``{name: tensor}`` mapping.
        ValueError: if a direction names a parameter the model lacks, has a wrong shape, holds
            non-finite values, or the directions span different parameters.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> check_directions(model, random_directions(model, 2))
        ['weight', 'bias']
    """
    dirs = [directions] if isinstance(directions, Mapping) else directions
    if not isinstance(dirs, Sequence) or not dirs:
        raise TypeError("directions must be a {name: tensor} dict or a non-empty list of them")
    named = dict(unwrap_model(model).named_parameters())
    keys = None
    for i, d in enumerate(dirs):
        if not isinstance(d, Mapping) or not all(isinstance(t, torch.Tensor) for t in d.values()):
            raise TypeError(f"directions[{i}] must be a dict of tensors keyed by parameter name")
        if not d:
            raise ValueError(f"directions[{i}] is empty")
        unknown = [n for n in d if n not in named]
        if unknown:
            raise ValueError(f"directions[{i}] names parameters the model does not have: {unknown[:5]}")
        for n, t in d.items():
            if t.shape != named[n].shape:
                raise ValueError(
                    f"directions[{i}][{n!r}] has shape {tuple(t.shape)}, the model's parameter {tuple(named[n].shape)}"
                )
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"directions[{i}][{n!r}] holds non-finite values")
        if keys is None:
            keys = set(d)
        elif set(d) != keys:
            raise ValueError("directions span different sets of parameters")
    return [n for n in named if n in keys]
