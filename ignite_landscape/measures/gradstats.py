"""Gradient statistics from exact per-sample gradients: their norms, the GSNR, the Fisher trace, and the path.

From the per-sample gradients ``g_i`` of the probe objective (``g_i = n·∇ℓ_i``, whose mean ``ḡ`` is the
probe gradient; see :mod:`~ignite_landscape.measures.persample`), computed chunk by chunk and folded into
running sums:

* ``sample_norms``: every ``‖g_i‖`` (``n`` numbers; a TensorBoard histogram).
* ``fisher_trace = Σ_i ‖g_i‖²/n``: the trace of the empirical Fisher ``(1/n)Σ g_i g_iᵀ`` (Jastrzębski et
  al. 2021, "Catastrophic Fisher explosion"). For a mean loss it is the mean squared per-sample gradient norm.
* ``gsnr``: the gradient signal-to-noise ratio of Liu et al. (2020), ``r_j = ḡ_j²/Var_j`` per coordinate
  with ``Var_j = Σ_i (g_ij − ḡ_j)²/(n − 1)``, averaged over the coordinates whose variance is positive
  (a coordinate no sample moves has no ratio; their number is in ``gsnr_coordinates``). Also per layer.
* ``trace_sigma = Σ_j Var_j``: the per-sample covariance trace of the noise scale, for reference.

Given earlier weights it also measures the path (no probe needed for these):

* ``distance_from_init = ‖θ − θ₀‖`` from ``initial`` (the :class:`~ignite_landscape.GradientStatistics`
  handler keeps ``θ₀`` at attach time),
* ``update_norm = ‖θ − θ_prev‖`` and ``relative_update = ‖θ − θ_prev‖/‖θ‖`` from ``previous``, overall and per
  layer (the module owning the parameters; ``root`` for the model's own).

Cost: one forward and backward per sample through ``vmap`` (about one gradient of the probe, less
batched), at most ``chunk_size × P`` numbers held at once, plus ``3P`` float64 running sums.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Linear(4, 3)
    >>> probe = Probe((torch.randn(32, 4), torch.randint(0, 3, (32,))), torch.nn.functional.cross_entropy)
    >>> res = gradient_statistics(model, probe)
    >>> res.sample_norms.shape, res.fisher_trace > 0, res.gsnr > 0
    (torch.Size([32]), True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ignite_landscape.measures.persample import check_per_sample_mode, per_sample_moments
from ignite_landscape.params import ParamsArg, ParamSpace, unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.validation import check_int

__all__ = ["GradientStatisticsResult", "GradStatsOptions", "gradient_statistics", "layer_label"]


def layer_label(owner: str) -> str:
    """The label of the module owning a parameter (``"root"`` for the model's own parameters)."""
    return owner or "root"


@dataclass(frozen=True)
class GradStatsOptions:
    """The options of :func:`gradient_statistics`, validated once (the handler builds the same object).

    Attributes:
        chunk_size: per-sample gradients computed at once (``None``: as many as fit in
            :data:`~ignite_landscape.measures.persample.CHUNK_BYTES`).

    Raises:
        TypeError, ValueError: for a ``chunk_size`` that is not a positive int.
    """

    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)

    @staticmethod
    def check_probe(probe: Probe) -> None:
        """Raise if the probe cannot give per-sample statistics (fewer than 2 samples, train mode)."""
        if probe.num_samples < 2:
            raise ValueError("probe: gradient statistics need at least 2 samples (a variance)")
        check_per_sample_mode(
            probe.model_mode,
            "build the probe with model_mode='eval' (probe.with_model_mode('eval') shares the samples)",
        )


@dataclass
class GradientStatisticsResult:
    """Per-sample gradient statistics on the probe, and the path's length (see the module docstring).

    Attributes:
        fisher_trace: ``Σ‖g_i‖²/n``.
        gsnr: mean of ``ḡ_j²/Var_j`` over the ``gsnr_coordinates`` coordinates with ``Var_j > 0``.
        grad_norm: ``‖ḡ‖``, the probe gradient's norm.
        trace_sigma: ``Σ_j Var_j`` (divisor ``n − 1``).
        sample_norms: float64 ``(n,)``: ``‖g_i‖`` in probe order (``None`` in a handler's history copy).
        num_samples: ``n``.
        gsnr_coordinates: coordinates in the GSNR mean.
        layer_gsnr: the GSNR mean over each layer's coordinates (NaN for a layer none of whose coordinates varies).
        distance_from_init: ``‖θ − θ₀‖`` (``None`` without ``initial``).
        update_norm: ``‖θ − θ_prev‖`` (``None`` without ``previous``).
        relative_update: ``update_norm/‖θ‖``.
        layer_update_norm: ``‖Δθ‖`` per layer.
        layer_relative_update: ``‖Δθ‖/‖θ‖`` per layer (NaN for a layer whose weights are all zero).
        chunk_size: per-sample gradients held at once.
    """

    fisher_trace: float
    gsnr: float
    grad_norm: float
    trace_sigma: float
    sample_norms: torch.Tensor | None
    num_samples: int
    gsnr_coordinates: int
    layer_gsnr: dict[str, float] = field(default_factory=dict)
    distance_from_init: float | None = None
    update_norm: float | None = None
    relative_update: float | None = None
    layer_update_norm: dict[str, float] = field(default_factory=dict)
    layer_relative_update: dict[str, float] = field(default_factory=dict)
    chunk_size: int = 0

    def histograms(self) -> dict[str, torch.Tensor]:
        """Distributions the TensorBoard log handler writes as histograms: ``sample_grad_norms``."""
        return {} if self.sample_norms is None else {"sample_grad_norms": self.sample_norms}

    def scalars(self) -> dict[str, float]:
        """``fisher_trace``, ``gsnr``, ``grad_norm``, ``trace_sigma``, the sample-norm mean/median/max, and when
        known ``distance_from_init``, ``update_norm``, ``relative_update``; per layer ``gsnr/<layer>``,
        ``update_norm/<layer>``, ``relative_update/<layer>``."""
        out = {
            "fisher_trace": self.fisher_trace,
            "gsnr": self.gsnr,
            "grad_norm": self.grad_norm,
            "trace_sigma": self.trace_sigma,
        }
        if self.sample_norms is not None and self.sample_norms.numel():
            out["sample_norm_mean"] = float(self.sample_norms.mean())
            out["sample_norm_median"] = float(self.sample_norms.median())
            out["sample_norm_max"] = float(self.sample_norms.max())
        for key in ("distance_from_init", "update_norm", "relative_update"):
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value)
        for label, value in self.layer_gsnr.items():
            out[f"gsnr/{label}"] = value
        for label, value in self.layer_update_norm.items():
            out[f"update_norm/{label}"] = value
        for label, value in self.layer_relative_update.items():
            out[f"relative_update/{label}"] = value
        return out


def gradient_statistics(
    model: nn.Module,
    probe: Probe,
    *,
    chunk_size: int | None = None,
    initial: Mapping[str, torch.Tensor] | None = None,
    previous: Mapping[str, torch.Tensor] | None = None,
    params: ParamsArg = None,
) -> GradientStatisticsResult:
    """Per-sample gradient norms, GSNR and Fisher trace on the probe; distance and update from earlier weights.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss, in ``model_mode="eval"`` (per-sample gradients are not defined
            when batch statistics couple the samples).
        chunk_size: per-sample gradients computed at once; bounds the memory at ``chunk_size × P`` numbers.
        initial: ``{name: tensor}`` weights ``θ₀`` for ``distance_from_init`` (every selected parameter).
        previous: ``{name: tensor}`` weights ``θ_prev`` for ``update_norm`` and ``relative_update``.
        params: restrict to a subset of parameters.

    Returns:
        A :class:`GradientStatisticsResult`.

    Raises:
        ValueError: on a train-mode probe, fewer than 2 samples, a bad ``chunk_size``, or ``initial``/``previous``
            lacking a selected parameter or of the wrong shape.
    """
    opts = GradStatsOptions(chunk_size)
    opts.check_probe(probe)
    space = ParamSpace.from_model(model, params)
    for arg, weights in (("initial", initial), ("previous", previous)):
        if weights is not None:
            _check_weights(arg, weights, space)
    return _gradient_statistics(model, probe, opts, space, initial, previous, params)


def _check_weights(arg: str, weights: Mapping[str, torch.Tensor], space: ParamSpace) -> None:
    if not isinstance(weights, Mapping):
        raise TypeError(f"{arg} must be a {{name: tensor}} mapping, got {type(weights).__name__}")
    try:
        space.flatten(weights)
    except ValueError as e:
        raise ValueError(f"{arg}: {e}") from None


def _gradient_statistics(
    model: nn.Module,
    probe: Probe,
    opts: GradStatsOptions,
    space: ParamSpace,
    initial: Mapping[str, torch.Tensor] | None,
    previous: Mapping[str, torch.Tensor] | None,
    params: ParamsArg,
) -> GradientStatisticsResult:
    with probe.session(model, params) as s:
        m = per_sample_moments(s, opts.chunk_size, norms=True)
    n = m.num_samples
    var = m.m2 / (n - 1)
    moves = var > 0
    ratio = torch.where(moves, m.mean**2 / torch.where(moves, var, 1.0), torch.zeros_like(var))
    count = int(moves.sum())
    layer_gsnr = {}
    for owner, ratios, masks in zip(*_by_layer(space, ratio, moves)):
        k = int(masks.sum())
        layer_gsnr[owner] = float(ratios.sum()) / k if k else math.nan
    assert m.sq_norms is not None
    result = GradientStatisticsResult(
        fisher_trace=float(m.sq_norms.sum()) / n,
        gsnr=float(ratio.sum()) / count if count else math.nan,
        grad_norm=float(m.mean.norm()),
        trace_sigma=float(var.sum()),
        sample_norms=m.sq_norms.sqrt().cpu(),
        num_samples=n,
        gsnr_coordinates=count,
        layer_gsnr=layer_gsnr,
        chunk_size=m.chunk_size,
    )
    theta = space.flatten(space.tensors(model)).detach().double()
    if initial is not None:
        result.distance_from_init = float((theta - _flat(space, initial, theta)).norm())
    if previous is not None:
        delta = theta - _flat(space, previous, theta)
        result.update_norm = float(delta.norm())
        result.relative_update = _ratio(result.update_norm, float(theta.norm()))
        for owner, d, w in zip(*_by_layer(space, delta, theta)):
            result.layer_update_norm[owner] = float(d.norm())
            result.layer_relative_update[owner] = _ratio(float(d.norm()), float(w.norm()))
    return result


def _flat(space: ParamSpace, weights: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return space.flatten({n: weights[n] for n in space.names}).detach().to(device=like.device, dtype=like.dtype)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _by_layer(space: ParamSpace, *vectors: torch.Tensor) -> tuple[list, ...]:
    """``(labels, vector 1's entries per layer, vector 2's ...)``, layers in order of first appearance."""
    parts = [dict(zip(space.names, v.split(space.numels))) for v in vectors]
    groups = space.module_groups()
    labels = [layer_label(owner) for owner in groups]
    out = [[torch.cat([p[name] for name in names]) for names in groups.values()] for p in parts]
    return (labels, *out)


def initial_weights(model: nn.Module, space: ParamSpace) -> dict[str, torch.Tensor]:
    """A detached copy of the selected weights of ``model`` (what the handler keeps as ``θ₀``)."""
    named = dict(unwrap_model(model).named_parameters())
    return {n: named[n].detach().clone() for n in space.names}
