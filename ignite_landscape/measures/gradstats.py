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

With ``uncertainty="jackknife"``: the delete-a-group jackknife standard error of ``gsnr`` and ``fisher_trace``
over ``K`` contiguous chunks of the probe (:mod:`~ignite_landscape.measures.jackknife`), from the same
per-sample gradients: each chunk's moments are kept (``2KP`` more float64 numbers) and each leave-one-chunk-out
value is computed from the other chunks' moments merged, so no gradient is computed twice. The per-sample
gradients are the full probe's (``n·∇ℓ_i``; for a mean loss each sample's own gradient, as on any subset).

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

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ignite_landscape.measures._definitions import band_definitions
from ignite_landscape.measures.jackknife import (
    JACKKNIFE_CHUNKS,
    check_uncertainty,
    interval,
    interval_scalars,
    jackknife_stderr,
    warn_if_wide,
)
from ignite_landscape.measures.persample import check_per_sample_mode, merge_moments, per_sample_moments
from ignite_landscape.params import ParamsArg, ParamSpace, unwrap_model
from ignite_landscape.probe import Probe
from ignite_landscape.results import Curve, Result
from ignite_landscape.validation import check_int

__all__ = [
    "GradientStatisticsResult",
    "GradStatsOptions",
    "gradient_statistics",
    "measure_gradient_statistics",
    "layer_label",
]


def layer_label(owner: str) -> str:
    """The label of the module owning a parameter (``"root"`` for the model's own parameters)."""
    return owner or "root"


@dataclass(frozen=True)
class GradStatsOptions:
    """The options of :func:`gradient_statistics`, validated once (the handler builds the same object).

    Attributes:
        chunk_size: per-sample gradients computed at once (``None``: as many as fit in
            :data:`~ignite_landscape.measures.persample.CHUNK_BYTES`).
        uncertainty: ``"jackknife"`` for standard errors of ``gsnr`` and ``fisher_trace``, or ``None``.
        jackknife_chunks: ``K``, the chunks of the jackknife.

    Raises:
        TypeError, ValueError: for a ``chunk_size`` that is not a positive int, or a bad ``uncertainty`` or
            ``jackknife_chunks``.
    """

    chunk_size: int | None = None
    uncertainty: str | None = None
    jackknife_chunks: int = JACKKNIFE_CHUNKS

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)
        check_uncertainty(self.uncertainty, self.jackknife_chunks)

    def check_probe(self, probe: Probe) -> None:
        """Raise if the probe cannot give per-sample statistics or the jackknife cannot work on it.

        Per-sample statistics need at least 2 samples and a probe not in train mode.
        """
        if probe.num_samples < 2:
            raise ValueError("probe: gradient statistics need at least 2 samples (a variance)")
        check_per_sample_mode(
            probe.model_mode,
            "build the probe with model_mode='eval' (probe.with_model_mode('eval') shares the samples)",
        )
        self.check_uncertainty(probe)

    def check_uncertainty(self, probe: Probe) -> None:
        """Raise if the jackknife cannot work on ``probe`` (more chunks than samples, a sharded probe)."""
        check_uncertainty(self.uncertainty, self.jackknife_chunks, probe)


@dataclass
class GradientStatisticsResult(Result):
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
        uncertainty: ``"jackknife"`` when the standard errors below were computed, else ``None``.
        gsnr_stderr: the jackknife standard error of ``gsnr`` over probe chunks (``None`` without ``uncertainty``).
        fisher_trace_stderr: the same for ``fisher_trace``.
        jackknife_chunks: the probe chunks of the jackknife (0 without ``uncertainty``).
    """

    kind = "gradstats"

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
    uncertainty: str | None = None
    gsnr_stderr: float | None = None
    fisher_trace_stderr: float | None = None
    jackknife_chunks: int = 0

    @property
    def gsnr_interval(self) -> tuple[float, float] | None:
        """``gsnr ± INTERVAL_Z·gsnr_stderr`` as ``(lo, hi)`` (``None`` without ``uncertainty``)."""
        return None if self.gsnr_stderr is None else interval(self.gsnr, self.gsnr_stderr)

    @property
    def fisher_trace_interval(self) -> tuple[float, float] | None:
        """``fisher_trace ± INTERVAL_Z·fisher_trace_stderr`` as ``(lo, hi)`` (``None`` without ``uncertainty``)."""
        return None if self.fisher_trace_stderr is None else interval(self.fisher_trace, self.fisher_trace_stderr)

    def histograms(self) -> dict[str, torch.Tensor]:
        """Distributions the TensorBoard log handler writes as histograms: ``sample_grad_norms``."""
        return {} if self.sample_norms is None else {"sample_grad_norms": self.sample_norms}

    def scalars(self) -> dict[str, float]:
        """Named scalars of the statistics, the path length and, with ``uncertainty``, their error bars.

        ``fisher_trace``, ``gsnr``, ``grad_norm``, ``trace_sigma``, the sample-norm mean/median/max, and when
        known ``distance_from_init``, ``update_norm``, ``relative_update``; per layer ``gsnr/<layer>``,
        ``update_norm/<layer>``, ``relative_update/<layer>``; with ``uncertainty`` ``gsnr_stderr``,
        ``gsnr_lo``, ``gsnr_hi`` and the same for ``fisher_trace``.
        """
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
        if self.gsnr_stderr is not None:
            out.update(interval_scalars("gsnr", self.gsnr, self.gsnr_stderr))
        if self.fisher_trace_stderr is not None:
            out.update(interval_scalars("fisher_trace", self.fisher_trace, self.fisher_trace_stderr))
        return out

    def curves(self) -> dict[str, Curve]:
        """The :meth:`histograms` as histogram curves (``sample_grad_norms``)."""
        return {key: Curve("histogram", x=values, xlabel="‖g_i‖") for key, values in self.histograms().items()}

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, with the number of samples and coordinates."""
        n = self.num_samples
        var = f"Var_j = Σ_i (g_ij − ḡ_j)²/(n − 1) over the n = {n} per-sample gradients g_i = n·∇ℓ_i"
        out = {
            "fisher_trace": (
                f"Σ_i ‖g_i‖²/n over the probe's n = {n} samples: the trace of the empirical Fisher (1/n)Σ g_i g_iᵀ "
                "(Jastrzębski et al. 2021)"
            ),
            "gsnr": (
                f"gradient signal-to-noise ratio ḡ_j²/Var_j (Liu et al. 2020) averaged over the "
                f"{self.gsnr_coordinates} coordinates with Var_j > 0, {var}"
            ),
            "grad_norm": "‖ḡ‖, the norm of the probe gradient",
            "trace_sigma": f"Σ_j Var_j, the trace of the per-sample gradient covariance, {var}",
            "sample_norm_mean": f"mean of the per-sample gradient norms ‖g_i‖ over the n = {n} samples",
            "sample_norm_median": f"median of the per-sample gradient norms ‖g_i‖ over the n = {n} samples",
            "sample_norm_max": f"largest per-sample gradient norm ‖g_i‖ over the n = {n} samples",
            "sample_grad_norms": f"histogram of the per-sample gradient norms ‖g_i‖ of the n = {n} samples",
            "distance_from_init": "‖θ − θ₀‖, the distance of the weights from those at attach time",
            "update_norm": "‖θ − θ_prev‖, the norm of the weights' change since the previous firing",
            "relative_update": "‖θ − θ_prev‖/‖θ‖, the change since the previous firing relative to the weights",
        }
        present = set(self.scalars())
        present |= set(self.curves())
        out = {k: v for k, v in out.items() if k in present}
        for label in self.layer_gsnr:
            out[f"gsnr/{label}"] = f"the GSNR ḡ_j²/Var_j averaged over layer {label}'s coordinates with Var_j > 0"
        for label in self.layer_update_norm:
            out[f"update_norm/{label}"] = f"‖Δθ‖ of layer {label}'s parameters since the previous firing"
        for label in self.layer_relative_update:
            out[f"relative_update/{label}"] = f"‖Δθ‖/‖θ‖ of layer {label}'s parameters since the previous firing"
        if self.gsnr_stderr is not None:
            out.update(band_definitions("gsnr", "the GSNR", self.jackknife_chunks))
        if self.fisher_trace_stderr is not None:
            out.update(band_definitions("fisher_trace", "the Fisher trace", self.jackknife_chunks))
        return out


def gradient_statistics(
    model: nn.Module,
    probe: Probe,
    *,
    chunk_size: int | None = None,
    initial: Mapping[str, torch.Tensor] | None = None,
    previous: Mapping[str, torch.Tensor] | None = None,
    params: ParamsArg = None,
    uncertainty: str | None = None,
    jackknife_chunks: int = JACKKNIFE_CHUNKS,
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
        uncertainty: ``"jackknife"``: also ``gsnr_stderr`` and ``fisher_trace_stderr``, jackknife standard errors
            over ``jackknife_chunks`` contiguous probe chunks, from the same per-sample gradients (no extra
            gradient; ``2·K·P`` float64 numbers held).
        jackknife_chunks: ``K``, the chunks of the jackknife (``2 ≤ K ≤`` the probe's samples).

    Returns:
        A :class:`GradientStatisticsResult`.

    Raises:
        ValueError: on a train-mode probe, fewer than 2 samples, a bad ``chunk_size``, ``uncertainty`` or
            ``jackknife_chunks``, or ``initial``/``previous`` lacking a selected parameter or of the wrong shape.
    """
    opts = GradStatsOptions(chunk_size, uncertainty, jackknife_chunks)
    opts.check_probe(probe)
    space = ParamSpace.from_model(model, params)
    for arg, weights in (("initial", initial), ("previous", previous)):
        if weights is not None:
            _check_weights(arg, weights, space)
    return measure_gradient_statistics(model, probe, opts, params=params, initial=initial, previous=previous)


def _check_weights(arg: str, weights: Mapping[str, torch.Tensor], space: ParamSpace) -> None:
    if not isinstance(weights, Mapping):
        raise TypeError(f"{arg} must be a {{name: tensor}} mapping, got {type(weights).__name__}")
    try:
        space.flatten(weights)
    except ValueError as e:
        raise ValueError(f"{arg}: {e}") from None


def measure_gradient_statistics(
    model: nn.Module,
    probe: Probe,
    options: GradStatsOptions,
    *,
    params: ParamsArg = None,
    initial: Mapping[str, torch.Tensor] | None = None,
    previous: Mapping[str, torch.Tensor] | None = None,
) -> GradientStatisticsResult:
    """:func:`gradient_statistics` on validated options and weights (the handler runs it; nothing is drawn).

    Example:
        >>> probe = Probe((torch.randn(8, 3), torch.randn(8, 1)), torch.nn.MSELoss())
        >>> res = measure_gradient_statistics(torch.nn.Linear(3, 1), probe, GradStatsOptions())
        >>> res.num_samples, res.sample_norms.shape
        (8, torch.Size([8]))
    """
    space = ParamSpace.from_model(model, params)
    groups = _GroupMoments(probe.num_samples, options.jackknife_chunks) if options.uncertainty is not None else None
    with probe.session(model, params) as s:
        m = per_sample_moments(s, options.chunk_size, norms=True, visit=groups.visit if groups is not None else None)
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
    if groups is not None:
        assert m.sq_norms is not None
        gsnr_loo, fisher_loo = groups.leave_one_out(m.sq_norms)
        result.uncertainty = options.uncertainty
        result.jackknife_chunks = options.jackknife_chunks
        result.gsnr_stderr = float(jackknife_stderr(gsnr_loo))
        result.fisher_trace_stderr = float(jackknife_stderr(fisher_loo))
        warn_if_wide("gsnr", result.gsnr, result.gsnr_stderr)
        warn_if_wide("fisher_trace", result.fisher_trace, result.fisher_trace_stderr)
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


def _gsnr(mean: torch.Tensor, m2: torch.Tensor, n: int) -> float:
    """The GSNR of ``n`` samples with mean ``mean`` and centred sums of squares ``m2`` (as in the result)."""
    var = m2 / (n - 1)
    moves = var > 0
    count = int(moves.sum())
    return float((mean[moves] ** 2 / var[moves]).sum()) / count if count else math.nan


class _GroupMoments:
    """Per-chunk moments of the per-sample gradients, for the leave-one-chunk-out jackknife.

    The probe's ``n`` samples are cut as :func:`~ignite_landscape.measures.jackknife.leave_one_out_probes`
    cuts them (contiguous, in probe order); :meth:`visit` receives the per-sample gradients in that order.
    """

    def __init__(self, n: int, chunks: int) -> None:
        self.bounds = [0, *itertools.accumulate(len(p) for p in torch.arange(n).tensor_split(chunks))]
        self.count = [0] * chunks
        self.mean: list[torch.Tensor | None] = [None] * chunks
        self.m2: list[torch.Tensor | None] = [None] * chunks
        self.seen = 0

    def visit(self, grads: torch.Tensor) -> None:
        lo, hi = self.seen, self.seen + grads.shape[0]
        for j in range(len(self.count)):
            a, b = max(lo, self.bounds[j]), min(hi, self.bounds[j + 1])
            if a < b:
                self._fold(j, grads[a - lo : b - lo].double())
        self.seen = hi

    def _fold(self, j: int, g: torch.Tensor) -> None:
        c, mu = g.shape[0], g.mean(dim=0)
        m2 = ((g - mu) ** 2).sum(dim=0)
        if self.mean[j] is None:
            self.count[j], self.mean[j], self.m2[j] = c, mu, m2
            return
        self.count[j], self.mean[j], self.m2[j] = merge_moments(self.count[j], self.mean[j], self.m2[j], c, mu, m2)

    def leave_one_out(self, sq_norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gsnr, fisher_trace)`` of each leave-one-chunk-out set of samples, as float64 ``(K,)`` tensors."""
        k = len(self.count)
        gsnr, fisher = [], []
        for j in range(k):
            n, mean, m2 = 0, None, None
            for i in range(k):
                if i == j:
                    continue
                if mean is None:
                    n, mean, m2 = self.count[i], self.mean[i], self.m2[i]
                else:
                    n, mean, m2 = merge_moments(n, mean, m2, self.count[i], self.mean[i], self.m2[i])
            assert mean is not None and m2 is not None
            gsnr.append(_gsnr(mean, m2, n))
            keep = torch.cat([sq_norms[: self.bounds[j]], sq_norms[self.bounds[j + 1] :]])
            fisher.append(float(keep.mean()))
        return torch.tensor(gsnr, dtype=torch.float64), torch.tensor(fisher, dtype=torch.float64)


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
