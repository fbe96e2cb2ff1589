"""The gradient noise scale ``B_simple = tr(Σ)/‖G‖²`` of McCandlish et al. (2018).

``G`` is the true gradient and ``Σ`` the covariance of per-sample gradients; ``B_simple`` estimates
the batch size beyond which larger batches stop paying off. Both are estimated from the probe's
``n`` samples, drawn from a data set of ``N`` samples (the *population*: ``probe.population_size``,
``len(dataset)`` when the probe is built from a loader; infinite when unknown).

* ``tr(Σ)`` is estimated by the trace of the sample covariance (divisor ``n − 1``), unbiased for the
  per-sample covariance of the population (the ``N − 1`` convention).
* ``‖G‖²``, the squared norm of the population's mean gradient, is estimated with the
  finite-population correction of sampling without replacement: ``E‖ḡ‖² = ‖G‖² + (1/n − 1/N)·tr(Σ)``,
  so ``‖G‖² ≈ ‖ḡ‖² − (1/n − 1/N)·tr(Σ)``. When the probe is the whole data set (``n = N``) this is
  ``‖ḡ‖²`` exactly, and always positive; with ``N = ∞`` it is McCandlish et al.'s unbiased estimate,
  which can be ≤ 0 when noise dominates (``b_simple`` is then ``inf``).

Two estimators of ``tr(Σ)`` and ``‖ḡ‖²`` (named in the result):

* ``"per_sample"``: exact per-sample gradients ``g_i`` with ``torch.func`` (``vmap`` over ``grad`` of
  ``functional_call``), computed ``chunk_size`` samples at a time and folded into running sums (the
  mean gradient and the centred sum of squared norms, combined exactly as in Chan et al.), so at most
  ``chunk_size`` per-sample gradients exist at once. Needs a model whose output on one sample does
  not depend on the others (``model_mode="eval"``).
* ``"two_batch"``: the estimator of McCandlish et al. (Appendix A.1) from gradient norms at two
  batch sizes: the probe is split at random (``seed``) into disjoint batches of ``small_batch``
  samples; with ``|G_s|²`` the mean squared norm of their gradients and ``|G_n|²`` that of the full
  probe gradient, ``tr(Σ) = (|G_s|² − |G_n|²)/(1/B_s − 1/n)``. Works in any mode (no per-sample
  gradients); with ``small_batch=1`` it equals the per-sample estimator.

The curvature-aware noise scale ``B_noise = tr(HΣ)/(GᵀHG)`` (McCandlish et al., eq. 2.7: the batch size
that the optimal step of a quadratic model of the loss calls critical; ``B_simple`` is its value for
``H = I``) uses exact Hessian-vector products of the probe objective, so it is exact up to the
estimates of ``Σ`` and ``G``, made as above with ``gᵀHg`` in place of ``‖g‖²``:

* ``"per_sample"``: ``tr(HΣ) = (Σ_i g_iᵀHg_i − n·ḡᵀHḡ)/(n − 1)``, the trace of ``H`` times the sample
  covariance, exactly: one HVP per sample (``n + 1`` in all), in the same pass as the moments.
* ``"two_batch"``: ``tr(HΣ) = (mean_j g_jᵀHg_j − ḡᵀHḡ)/(1/B_s − 1/n)`` over the small batches ``j``
  (``n/B_s + 1`` HVPs); with ``small_batch=1`` it equals the per-sample estimate.
* ``GᵀHG ≈ ḡᵀHḡ − (1/n − 1/N)·tr(HΣ)`` (the finite-population correction), and ``b_noise = inf``
  when that is not positive (no optimal step along ``G``).

``b_noise=None`` computes it where it can (one process); ``False`` skips the HVPs (``b_noise`` is then
``None``).

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> probe = Probe((torch.randn(64, 4), torch.randint(0, 3, (64,))), torch.nn.functional.cross_entropy)
    >>> res = gradient_noise_scale(torch.nn.Linear(4, 3), probe)
    >>> res.estimator, res.population_size, res.b_simple > 0
    ('per_sample', 64.0, True)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ignite_landscape import distributed
from ignite_landscape.linalg import generator
from ignite_landscape.measures.persample import CHUNK_BYTES, check_per_sample_mode, per_sample_moments
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe, ProbeSession
from ignite_landscape.results import Result
from ignite_landscape.validation import check_choice, check_int

__all__ = [
    "NoiseScale",
    "NoiseOptions",
    "gradient_noise_scale",
    "measure_gradient_noise_scale",
    "NOISE_METHODS",
    "CHUNK_BYTES",
]

NOISE_METHODS = ("per_sample", "two_batch")


@dataclass(frozen=True)
class NoiseOptions:
    """The options of :func:`gradient_noise_scale`, validated once (the handler builds the same object).

    Attributes:
        method: ``"per_sample"`` or ``"two_batch"``.
        small_batch: ``B_s`` of ``"two_batch"`` (``None``: ``max(1, n // 16)``).
        chunk_size: per-sample gradients computed at once by ``"per_sample"`` (``None``: as many as fit in
            :data:`CHUNK_BYTES`).
        population_size: ``N`` for the finite-population correction: ``None`` uses
            ``probe.population_size``, ``math.inf`` assumes an infinite population.
        b_noise: compute ``B_noise`` (``True``), skip it (``False``), or compute it where it can (``None``:
            in one process).

    Raises:
        TypeError, ValueError: for an option of the wrong type or value (naming it).
    """

    method: str = "per_sample"
    small_batch: int | None = None
    chunk_size: int | None = None
    population_size: int | float | None = None
    b_noise: bool | None = None

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        check_choice("method", self.method, NOISE_METHODS)
        if self.b_noise is not None and not isinstance(self.b_noise, bool):
            raise TypeError(f"b_noise must be True, False or None, got {type(self.b_noise).__name__}")
        if self.small_batch is not None:
            check_int("small_batch", self.small_batch, 1)
            if self.method != "two_batch":
                raise ValueError("small_batch is only used by method='two_batch'")
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)
            if self.method != "per_sample":
                raise ValueError("chunk_size is only used by method='per_sample'")
        n = self.population_size
        if n is not None and n != math.inf:
            check_int("population_size", n, 1)

    def check_probe(self, probe: Probe) -> None:
        """Raise if these options cannot work on ``probe`` (too few samples, a batch or population too small)."""
        n = probe.num_samples
        if n < 2:
            raise ValueError("probe: the gradient noise scale needs at least 2 samples to estimate a covariance")
        if self.small_batch is not None and self.small_batch >= n:
            raise ValueError(f"small_batch must be in [1, {n}) (the probe's samples), got {self.small_batch}")
        if self.method == "per_sample":
            check_per_sample_mode(probe.model_mode, "use method='two_batch'")
        if self.population_size is not None and self.population_size < n:
            raise ValueError(f"population_size={self.population_size} is smaller than the probe's {n} samples")

    def population(self, probe: Probe) -> float:
        """``N`` as a float (``inf`` when unknown)."""
        n = self.population_size if self.population_size is not None else probe.population_size
        return math.inf if n is None else float(n)


@dataclass
class NoiseScale(Result):
    """The simple gradient noise scale and the estimates behind it.

    Attributes:
        b_simple: ``trace_sigma / grad_norm_sq`` (``inf`` when the gradient estimate is not positive).
        trace_sigma: unbiased estimate of ``tr(Σ)``, the trace of the per-sample gradient covariance.
        grad_norm_sq: estimate of ``‖G‖²`` with the finite-population correction (may be ≤ 0 when
            noise dominates and the probe is a small share of the population).
        estimator: ``"per_sample"`` or ``"two_batch"``.
        num_samples: ``n``, the samples used.
        small_batch: ``B_s`` of the two-batch estimator (1 for per-sample).
        probe_grad_norm_sq: ``‖ḡ‖²`` of the probe gradient itself.
        population_size: ``N`` used by the correction (``inf`` when unknown).
        chunk_size: per-sample gradients held at once (``"per_sample"``; 0 for two-batch).
        b_noise: ``trace_h_sigma / grad_curvature``, the curvature-aware noise scale (``inf`` when
            ``grad_curvature`` is not positive; ``None`` when not computed).
        trace_h_sigma: estimate of ``tr(HΣ)`` (``None`` when not computed).
        grad_curvature: estimate of ``GᵀHG`` with the finite-population correction.
        probe_grad_curvature: ``ḡᵀHḡ`` of the probe gradient itself.
        num_hvps: Hessian-vector products spent on ``b_noise``.
    """

    kind = "noise_scale"

    b_simple: float
    trace_sigma: float
    grad_norm_sq: float
    estimator: str
    num_samples: int
    small_batch: int = 1
    probe_grad_norm_sq: float = 0.0
    population_size: float = math.inf
    chunk_size: int = 0
    b_noise: float | None = None
    trace_h_sigma: float | None = None
    grad_curvature: float | None = None
    probe_grad_curvature: float | None = None
    num_hvps: int = 0

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``b_simple``, ``trace_sigma``, ``grad_norm_sq``, ``probe_grad_norm_sq``.

        When computed, also ``b_noise``, ``trace_h_sigma`` and ``grad_curvature``.
        """
        out = {
            "b_simple": self.b_simple,
            "trace_sigma": self.trace_sigma,
            "grad_norm_sq": self.grad_norm_sq,
            "probe_grad_norm_sq": self.probe_grad_norm_sq,
        }
        if self.b_noise is not None:
            out.update(b_noise=self.b_noise, trace_h_sigma=self.trace_h_sigma, grad_curvature=self.grad_curvature)
        return out

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key, with the estimator, the samples and the finite-population correction."""
        n = self.num_samples
        if self.estimator == "two_batch":
            how = (
                f"by the two-batch estimator of McCandlish et al. (2018, App. A.1): gradients of disjoint batches of "
                f"B_s = {self.small_batch} against the whole probe of n = {n} samples"
            )
        else:
            how = f"from the exact per-sample gradients of the probe's n = {n} samples"
        unknown = math.isinf(self.population_size)
        population = "N = ∞ (the population size unknown)" if unknown else f"N = {self.population_size:.0f}"
        fpc = "with the finite-population correction of sampling without replacement"
        out = {
            "b_simple": f"simple gradient noise scale tr(Σ)/‖G‖² (McCandlish et al. 2018), {how}; inf when ‖G‖² ≤ 0",
            "trace_sigma": f"unbiased estimate of tr(Σ), the trace of the per-sample gradient covariance, {how}",
            "grad_norm_sq": (
                f"estimate of ‖G‖², the squared norm of the population's mean gradient, ‖ḡ‖² − (1/n − 1/N)·tr(Σ) "
                f"{fpc}, {population}; may be ≤ 0 when noise dominates"
            ),
            "probe_grad_norm_sq": f"‖ḡ‖², the squared norm of the probe gradient itself (n = {n} samples)",
        }
        if self.b_noise is not None:
            out["b_noise"] = (
                f"curvature-aware noise scale tr(HΣ)/(GᵀHG) (McCandlish et al. 2018, eq. 2.7) on exact Hessian-vector "
                f"products ({self.num_hvps}), {how}; inf when GᵀHG ≤ 0"
            )
            out["trace_h_sigma"] = f"estimate of tr(HΣ), the Hessian times the per-sample gradient covariance, {how}"
            out["grad_curvature"] = f"estimate of GᵀHG, ḡᵀHḡ − (1/n − 1/N)·tr(HΣ) {fpc}, {population}"
        return out

    def with_curvature(self, sum_ghg: float, probe_ghg: float, small: int, num_hvps: int) -> NoiseScale:
        """This result with ``B_noise`` from the mean of ``g_jᵀHg_j`` over batches and the probe's ``ḡᵀHḡ``.

        The batches hold ``small`` samples each (``sum_ghg`` over ``n/small`` batches); see the module docstring.
        """
        n, batches = self.num_samples, self.num_samples // small
        trace_h_sigma = (sum_ghg / batches - probe_ghg) / (1.0 / small - 1.0 / n)
        ghg = probe_ghg - (1.0 / n - 1.0 / self.population_size) * trace_h_sigma
        return dataclasses.replace(
            self,
            b_noise=_ratio(trace_h_sigma, ghg),
            trace_h_sigma=trace_h_sigma,
            grad_curvature=ghg,
            probe_grad_curvature=probe_ghg,
            num_hvps=num_hvps,
        )


def _ratio(trace_sigma: float, grad_norm_sq: float) -> float:
    return trace_sigma / grad_norm_sq if grad_norm_sq > 0 else math.inf


def _result(
    trace_sigma: float, probe_sq: float, n: int, population: float, estimator: str, small: int, chunk: int
) -> NoiseScale:
    # Finite-population correction: E‖ḡ‖² = ‖G‖² + (1/n − 1/N)·tr(Σ) for n of N samples without replacement.
    # (With the whole population, N = n, the factor is exactly 0.0 and ‖G‖² = ‖ḡ‖² to the bit.)
    grad_sq = probe_sq - (1.0 / n - 1.0 / population) * trace_sigma
    return NoiseScale(
        _ratio(trace_sigma, grad_sq), trace_sigma, grad_sq, estimator, n, small, probe_sq, population, chunk
    )


def gradient_noise_scale(
    model: nn.Module,
    probe: Probe,
    *,
    method: str = "per_sample",
    small_batch: int | None = None,
    chunk_size: int | None = None,
    population_size: int | float | None = None,
    b_noise: bool | None = None,
    seed: int = 0,
    params: ParamsArg = None,
) -> NoiseScale:
    """Estimate ``B_simple = tr(Σ)/‖G‖²`` on the probe (see the module docstring).

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss. The per-sample gradients are ``g_i = n·∇ℓ_i`` with ``ℓ_i`` sample
            ``i``'s share of the probe objective, so that their mean is the probe gradient (for a mean
            loss, each sample's own loss gradient).
        method: ``"per_sample"`` or ``"two_batch"``.
        small_batch: ``B_s`` for ``"two_batch"`` (default ``max(1, n // 16)``; ``1 ≤ B_s < n``).
        chunk_size: per-sample gradients computed at once (``"per_sample"``); bounds the memory at
            ``chunk_size × P`` numbers. Default: as many as fit in :data:`CHUNK_BYTES`.
        population_size: ``N`` of the finite-population correction; default ``probe.population_size``
            (``math.inf``: an infinite population).
        b_noise: compute the curvature-aware ``B_noise`` (``True``; ``n + 1`` HVPs per-sample, ``n/B_s + 1``
            two-batch), skip it (``False``), or compute it in one process and skip it under a process group
            (``None``).
        seed: seed of the random split into small batches.
        params: restrict to a subset of parameters.

    Returns:
        A :class:`NoiseScale`.

    Raises:
        ValueError: for an unknown method, a bad ``small_batch``/``chunk_size``/``population_size``,
            fewer than 2 samples, or ``"per_sample"`` with ``model_mode="train"``.
    """
    opts = NoiseOptions(
        method=method, small_batch=small_batch, chunk_size=chunk_size, population_size=population_size, b_noise=b_noise
    )
    opts.check_probe(probe)
    return measure_gradient_noise_scale(model, probe, opts, seed, params)


def measure_gradient_noise_scale(
    model: nn.Module, probe: Probe, options: NoiseOptions, seed: int = 0, params: ParamsArg = None
) -> NoiseScale:
    """:func:`gradient_noise_scale` on validated options (the caller runs ``options.check_probe(probe)``, once).

    Example:
        >>> probe = Probe((torch.randn(16, 3), torch.randn(16, 1)), torch.nn.MSELoss())
        >>> res = measure_gradient_noise_scale(torch.nn.Linear(3, 1), probe, NoiseOptions(method="two_batch"))
        >>> res.estimator, res.b_simple > 0
        ('two_batch', True)
    """
    with probe.session(model, params) as s:
        if options.method == "per_sample":
            return _per_sample(s, options)
        return _two_batch(s, options, seed)


def _wants_b_noise(opts: NoiseOptions) -> bool:
    if opts.b_noise is True and distributed.world_size() > 1:
        # One HVP per sample would need every rank to take part in every other rank's products.
        raise ValueError("b_noise=True runs in a single process; use b_noise=None or False under ignite.distributed")
    return opts.b_noise is True or (opts.b_noise is None and distributed.world_size() == 1)


def _per_sample(s: ProbeSession, opts: NoiseOptions) -> NoiseScale:
    # The exact per-sample gradients, folded into running moments (shared with gradient_statistics).
    curvature = _wants_b_noise(opts)
    ghg = [0.0]

    def quadratic_forms(rows: torch.Tensor) -> None:
        for g in rows:  # g_iᵀHg_i, one exact HVP each, while the chunk's gradients exist anyway
            ghg[0] += float(g.double() @ s.hvp(g).double())

    m = per_sample_moments(s, opts.chunk_size, visit=quadratic_forms if curvature else None)
    trace_sigma = float(m.m2.sum()) / (m.num_samples - 1)
    probe_sq = float(m.mean @ m.mean)
    result = _result(trace_sigma, probe_sq, m.num_samples, opts.population(s.probe), "per_sample", 1, m.chunk_size)
    if not curvature:
        return result
    probe_ghg = float(m.mean @ s.hvp(m.mean).double())
    return result.with_curvature(ghg[0], probe_ghg, 1, m.num_samples + 1)


def _two_batch(s: ProbeSession, opts: NoiseOptions, seed: int) -> NoiseScale:
    n_total = s.probe.global_num_samples
    small = opts.small_batch or max(1, n_total // 16)
    if distributed.world_size() > 1:
        raise ValueError("method='two_batch' runs in a single process; use 'per_sample' under ignite.distributed")
    _, g_full = s.loss_and_grad()
    g_full = g_full.double()
    perm = torch.randperm(n_total, generator=generator(seed)).to(s.probe.device)
    k = n_total // small
    curvature = _wants_b_noise(opts)
    sq = ghg = 0.0
    # The mean of each small batch's per-sample gradients (see _per_sample): n/B times its share.
    for g in s.subset_gradients(perm[j * small : (j + 1) * small] for j in range(k)):
        flat = g.double()
        sq += float(flat @ flat)
        if curvature:
            ghg += float(flat @ s.hvp(flat).double())
    small_sq = sq / k
    full_sq = float(g_full @ g_full)
    trace_sigma = (small_sq - full_sq) / (1.0 / small - 1.0 / n_total)
    result = _result(trace_sigma, full_sq, n_total, opts.population(s.probe), "two_batch", small, 0)
    if not curvature:
        return result
    return result.with_curvature(ghg, float(g_full @ s.hvp(g_full).double()), small, k + 1)
