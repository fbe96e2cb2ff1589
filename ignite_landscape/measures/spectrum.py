"""Hessian spectrum of a model on a probe: extreme eigenvalues, trace, density, per-layer table.

All of them use exact Hessian-vector products from :class:`~ignite_landscape.probe.ProbeSession`
and the matrix-free routines of :mod:`ignite_landscape.linalg`.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> probe = Probe((torch.randn(32, 4), torch.randint(0, 3, (32,))), torch.nn.functional.cross_entropy)
    >>> res = hessian_eigenvalues(model, probe, k=2)
    >>> res.eigenvalues.shape, bool(res.eigenvalues[0] >= res.eigenvalues[1])
    (torch.Size([2]), True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ignite_landscape.curvature import check_curvature, curvature_operator
from ignite_landscape.linalg import (
    TRACE_METHODS,
    Quadrature,
    gaussian_density,
    hutchinson,
    hutchpp,
    lanczos,
    stochastic_lanczos_quadrature,
)
from ignite_landscape.measures.diagonal import ExactUnsupportedError, diagonal_result, session_hessian_diagonal
from ignite_landscape.measures.jackknife import (
    INTERVAL_Z,
    JACKKNIFE_CHUNKS,
    check_uncertainty,
    interval,
    interval_scalars,
    jackknife_stderr,
    leave_one_out_probes,
    warn_if_wide,
)
from ignite_landscape.params import ParamsArg, ParamSpace
from ignite_landscape.probe import Probe, ProbeSession
from ignite_landscape.validation import check_choice, check_int, check_positive

__all__ = [
    "HessianEigenvalues",
    "HessianTraceResult",
    "HessianDensityResult",
    "TraceOptions",
    "DensityOptions",
    "LayerCurvature",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_density",
    "layerwise_curvature",
    "preconditioned_eigenvalues",
    "eigenspace_overlap",
]


@dataclass
class HessianEigenvalues:
    """Extreme Hessian eigenvalues found by block Krylov–Rayleigh–Ritz (Lanczos).

    Attributes:
        eigenvalues: float64; descending for ``"largest"`` and ``"both"`` (k largest, then k smallest
            descending), ascending for ``"smallest"``; a repeated eigenvalue appears once per copy.
        residuals: ``‖Hy − θy‖`` of each, recomputed from the products and never below the working
            precision (``16·ε·max|θ|``); each eigenvalue lies within its residual of a true one.
        converged: whether each residual met ``tol·|θ|`` and the exploration beyond the wanted ones
            was enough to rule out a missed eigenvalue above them (see :func:`hessian_eigenvalues`).
        num_hvps: Hessian-vector products used.
        which: the end(s) asked for.
        space: the parameters spanning the operator.
        eigenvectors: ``(len(eigenvalues), P)`` unit Ritz vectors when requested.
        tol: tolerance used.
        stderr: with ``uncertainty="jackknife"``, the jackknife standard error of each eigenvalue over the
            probe's samples (float64, like ``eigenvalues``), else ``None``.
        uncertainty_hvps: Hessian-vector products spent on ``stderr`` (not in ``num_hvps``).
    """

    eigenvalues: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    num_hvps: int
    which: str
    space: ParamSpace
    eigenvectors: torch.Tensor | None = None
    tol: float = 1e-4
    stderr: torch.Tensor | None = None
    uncertainty_hvps: int = 0

    @property
    def lambda_max(self) -> float:
        """The largest eigenvalue found (NaN for ``which="smallest"``)."""
        if self.which == "smallest":
            return float("nan")
        return float(self.eigenvalues[0])

    @property
    def lambda_min(self) -> float:
        """The smallest eigenvalue found (NaN for ``which="largest"``)."""
        if self.which == "largest":
            return float("nan")
        return float(self.eigenvalues.min()) if self.which == "both" else float(self.eigenvalues[0])

    @property
    def interval(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(lo, hi)``: each eigenvalue ± ``INTERVAL_Z``·its standard error (``None`` without ``stderr``)."""
        if self.stderr is None:
            return None
        return self.eigenvalues - INTERVAL_Z * self.stderr, self.eigenvalues + INTERVAL_Z * self.stderr

    def eigenvector(self, i: int) -> dict[str, torch.Tensor]:
        """Eigenvector ``i`` as ``{parameter name: tensor}``."""
        if self.eigenvectors is None:
            raise ValueError("eigenvectors were not computed: pass return_eigenvectors=True")
        return self.space.unflatten(self.eigenvectors[i])

    def scalars(self) -> dict[str, float]:
        """Named scalars (``lambda_max``, ``lambda_1`` … ``lambda_k``, ``lambda_min``, ``num_hvps``).

        With ``stderr``: ``lambda_max_stderr`` (``lambda_min_stderr``), each ``lambda_i`` (``lambda_min_i``)
        with ``_stderr``, ``_lo`` and ``_hi`` (the :attr:`interval`), and ``uncertainty_hvps``.
        """
        out: dict[str, float] = {}
        if self.which == "smallest":
            for i, v in enumerate(self.eigenvalues.tolist(), 1):
                out[f"lambda_min_{i}"] = v
            out["lambda_min"] = self.lambda_min
        else:
            k = len(self.eigenvalues) // 2 if self.which == "both" else len(self.eigenvalues)
            out["lambda_max"] = self.lambda_max
            for i, v in enumerate(self.eigenvalues[:k].tolist(), 1):
                out[f"lambda_{i}"] = v
            if self.which == "both":
                out["lambda_min"] = self.lambda_min
        out["num_hvps"] = float(self.num_hvps)
        out["max_relative_residual"] = float((self.residuals / self.eigenvalues.abs().clamp_min(1e-30)).max())
        if self.stderr is not None:
            out.update(self._stderr_scalars())
        return out

    def _stderr_scalars(self) -> dict[str, float]:
        assert self.stderr is not None
        values, errs = self.eigenvalues.tolist(), self.stderr.tolist()
        out: dict[str, float] = {}
        if self.which == "smallest":
            out["lambda_min_stderr"] = errs[0]
            for i, (v, e) in enumerate(zip(values, errs), 1):
                out.update(interval_scalars(f"lambda_min_{i}", v, e))
        else:
            k = len(values) // 2 if self.which == "both" else len(values)
            out["lambda_max_stderr"] = errs[0]
            for i, (v, e) in enumerate(zip(values[:k], errs[:k]), 1):
                out.update(interval_scalars(f"lambda_{i}", v, e))
            if self.which == "both":
                out["lambda_min_stderr"] = errs[int(self.eigenvalues.argmin())]
        out["uncertainty_hvps"] = float(self.uncertainty_hvps)
        return out


def hessian_eigenvalues(
    model: nn.Module,
    probe: Probe,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-4,
    *,
    max_iter: int | None = None,
    params: ParamsArg = None,
    seed: int = 0,
    v0: torch.Tensor | None = None,
    return_eigenvectors: bool = False,
    curvature: str = "hessian",
    num_random: int = 2,
    uncertainty: str | None = None,
    jackknife_chunks: int = JACKKNIFE_CHUNKS,
) -> HessianEigenvalues:
    """Extreme eigenvalues of the probe-loss Hessian, with their multiplicity.

    Block Krylov–Rayleigh–Ritz with full reorthogonalization on exact Hessian-vector products (see
    :func:`ignite_landscape.linalg.lanczos`): the start block holds two random vectors (``v0`` folded into
    the first), so an eigenvalue of multiplicity two is reported twice; ``residuals`` are recomputed from the
    products and floored at the working precision, and ``converged`` also requires the first Ritz
    pair beyond the wanted ones to be resolved to 1%, so a warm start cannot stop before an
    eigenvalue it never saw would show up.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        k: eigenvalues per wanted end (``1 ≤ k <`` number of parameters).
        which: ``"largest"``, ``"smallest"`` (finds negative eigenvalues: no shift) or ``"both"``.
        tol: stop when each wanted Ritz residual is ``≤ tol·|λ|``.
        max_iter: cap on Hessian-vector products.
        params: restrict to a subset of parameters (e.g. ``"conv1"``), see :class:`ParamSpace`.
        seed: seed of the random start vectors.
        v0: start vector or block of them (rows, flat in the order of the selected parameters), e.g.
            last time's eigenvectors; random vectors are always added, so it changes the cost, not the answer.
        return_eigenvectors: also return the Ritz vectors.
        curvature: the matrix: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"`` (see
            :mod:`ignite_landscape.curvature`; ``num_hvps`` then counts its products).
        num_random: random start vectors (``≥ 1``): eigenvalues of up to this multiplicity are found
            with it. Each costs HVPs (on the digits CNN, top-5 at tol 1e-4: 14 HVPs with one, 19 with two).
        uncertainty: ``"jackknife"``: also ``stderr``, each eigenvalue's jackknife standard error over the
            probe's samples (:mod:`~ignite_landscape.measures.jackknife`; ``jackknife_chunks`` more runs, each
            on the probe without one chunk and warm-started from these eigenvectors).
        jackknife_chunks: ``K``, the chunks of the jackknife (``2 ≤ K ≤`` the probe's samples).

    Raises:
        TypeError, ValueError: for a bad ``k``, ``which``, ``tol``, ``max_iter``, ``num_random``, ``v0``,
            ``uncertainty`` or ``jackknife_chunks``.
    """
    check_curvature(curvature)
    check_int("num_random", num_random, 1)
    check_uncertainty(uncertainty, jackknife_chunks, probe)
    with probe.session(model, params) as s:
        matvec = curvature_operator(s, curvature, seed)
        full = _session_eigenvalues(
            s, matvec, k, which, tol, max_iter, v0, seed, return_eigenvectors or uncertainty is not None, num_random
        )
    if uncertainty is None:
        return full
    loo = [
        hessian_eigenvalues(
            model,
            part,
            k,
            which,
            tol,
            max_iter=max_iter,
            params=params,
            seed=seed,
            v0=full.eigenvectors,
            curvature=curvature,
            num_random=num_random,
        )
        for part in leave_one_out_probes(probe, jackknife_chunks)
    ]
    full.stderr = jackknife_stderr(torch.stack([r.eigenvalues for r in loo]))
    full.uncertainty_hvps = sum(r.num_hvps for r in loo)
    if not return_eigenvectors:
        full.eigenvectors = None
    if which != "smallest":
        warn_if_wide("lambda_max", full.lambda_max, float(full.stderr[0]))
    return full


def _session_eigenvalues(
    s: ProbeSession,
    matvec: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    which: str,
    tol: float,
    max_iter: int | None,
    v0: torch.Tensor | None,
    seed: int,
    return_eigenvectors: bool,
    num_random: int = 2,
) -> HessianEigenvalues:
    res = lanczos(
        matvec,
        s.space.numel,
        k=k,
        which=which,
        tol=tol,
        max_iter=max_iter,
        v0=v0,
        seed=seed,
        dtype=s.dtype,
        device=s.base[0].device,
        return_eigenvectors=return_eigenvectors,
        num_random=num_random,
    )
    return HessianEigenvalues(
        eigenvalues=res.eigenvalues,
        residuals=res.residuals,
        converged=res.converged,
        num_hvps=s.num_hvps,
        which=which,
        space=s.space,
        eigenvectors=res.eigenvectors,
        tol=tol,
    )


@dataclass
class HessianTraceResult:
    """A stochastic estimate of the Hessian trace.

    Attributes:
        value: the estimate of ``tr(H)``.
        stderr: its standard error.
        num_hvps: Hessian-vector products used.
        method: ``"hutchinson"``, ``"hutch++"`` or ``"exact"`` (the method that ran; ``method="auto"`` says
            which here).
        num_params: dimension of the Hessian (``value / num_params`` is the mean eigenvalue).
        layer_traces: for ``"exact"``, the trace of each module's diagonal block (``{module name: trace}``).
        fallback: for ``method="auto"`` that ran Hutch++, why the exact method was not used.
        curvature: the matrix whose trace this is (``"hessian"``, ``"ggn"``, ``"fisher"``, ``"empirical_fisher"``).
        uncertainty: ``"jackknife"`` when ``stderr`` is the jackknife standard error over the probe's samples
            (with the same random vectors on every subset), else ``None`` (``stderr`` is the estimator's).
        estimator_stderr: with ``uncertainty``, the estimator's own standard error (``stderr`` without it).
        uncertainty_hvps: Hessian-vector products spent on the jackknife (not in ``num_hvps``).
    """

    value: float
    stderr: float
    num_hvps: int
    method: str
    num_params: int
    layer_traces: dict[str, float] | None = None
    fallback: str | None = None
    curvature: str = "hessian"
    uncertainty: str | None = None
    estimator_stderr: float | None = None
    uncertainty_hvps: int = 0

    @property
    def interval(self) -> tuple[float, float] | None:
        """With ``uncertainty``: ``value ± INTERVAL_Z·stderr`` as ``(lo, hi)``, else ``None``."""
        return interval(self.value, self.stderr) if self.uncertainty is not None else None

    def scalars(self) -> dict[str, float]:
        """Named scalars for logging (with ``uncertainty`` also ``value_lo``, ``value_hi``, ``uncertainty_hvps``)."""
        out = {
            "value": self.value,
            "stderr": self.stderr,
            "mean_eigenvalue": self.value / self.num_params,
            "num_hvps": float(self.num_hvps),
        }
        if self.estimator_stderr is not None:
            out["estimator_stderr"] = self.estimator_stderr
        if self.uncertainty is not None:
            out.update(interval_scalars("value", self.value, self.stderr, stderr_key="stderr"))
            out["uncertainty_hvps"] = float(self.uncertainty_hvps)
        return out


@dataclass(frozen=True)
class TraceOptions:
    """The method and budget of :func:`hessian_trace`, validated once (the
    :class:`~ignite_landscape.HessianTrace` handler builds the same object at construction).

    Attributes:
        method: ``"hutch++"``, ``"hutchinson"``, ``"exact"`` or ``"auto"``.
        num_hvps: budget of Hessian-vector products: at least 6 for Hutch++ and ``"auto"`` (which may
            fall back to it: a sketch, its products and a Hutchinson part of at least 2), at least 2 for
            Hutchinson (for a standard error), unused by ``"exact"``.

    Raises:
        TypeError: for a non-int ``num_hvps``.
        ValueError: for an unknown method or a budget too small for it.
    """

    method: str = "hutch++"
    num_hvps: int = 60

    def __post_init__(self) -> None:
        check_choice("method", self.method, (*TRACE_METHODS, "exact", "auto"))
        check_int("num_hvps", self.num_hvps, {"hutchinson": 2, "exact": 1}.get(self.method, 6))


def hessian_trace(
    model: nn.Module,
    probe: Probe,
    *,
    method: str = "hutch++",
    num_hvps: int = 60,
    params: ParamsArg = None,
    seed: int = 0,
    curvature: str = "hessian",
    uncertainty: str | None = None,
    jackknife_chunks: int = JACKKNIFE_CHUNKS,
) -> HessianTraceResult:
    """Estimate ``tr(H)`` with Hutchinson or Hutch++ and Rademacher vectors, or compute it exactly.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        method: ``"hutch++"`` (default; lower variance when a few eigenvalues dominate), ``"hutchinson"``,
            ``"exact"`` (the exact diagonal summed, see :func:`~ignite_landscape.measures.diagonal.hessian_diagonal`;
            needs the ``exact`` extra and a supported network) or ``"auto"`` (exact where supported, else
            Hutch++; ``result.method`` says which ran and ``result.fallback`` why).
        num_hvps: budget of Hessian-vector products (stochastic methods).
        params: restrict to a subset of parameters.
        seed: seed of the random vectors (the same seed gives the same vectors every time).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``; ``"exact"`` is for the Hessian.
        uncertainty: ``"jackknife"``: ``stderr`` is the jackknife standard error over the probe's samples
            (``jackknife_chunks`` more runs on the probe without one chunk, with the same random vectors), and
            the estimator's own goes to ``estimator_stderr``.
        jackknife_chunks: ``K``, the chunks of the jackknife.

    Raises:
        ImportError: for ``method="exact"`` without BackPACK (``pip install "ignite_landscape[exact]"``).
        ValueError: for an unknown method or curvature, ``method="exact"`` on an unsupported network, or a bad
            ``uncertainty``/``jackknife_chunks``.
    """
    check_uncertainty(uncertainty, jackknife_chunks, probe)
    if uncertainty is not None:
        full = hessian_trace(
            model, probe, method=method, num_hvps=num_hvps, params=params, seed=seed, curvature=curvature
        )
        loo = [
            hessian_trace(model, part, method=method, num_hvps=num_hvps, params=params, seed=seed, curvature=curvature)
            for part in leave_one_out_probes(probe, jackknife_chunks)
        ]
        stderr = float(jackknife_stderr(torch.tensor([r.value for r in loo], dtype=torch.float64)))
        warn_if_wide("trace", full.value, stderr)
        return dataclasses.replace(
            full,
            stderr=stderr,
            uncertainty=uncertainty,
            estimator_stderr=full.stderr,
            uncertainty_hvps=sum(r.num_hvps for r in loo),
        )
    TraceOptions(method, num_hvps)
    check_curvature(curvature)
    if method == "exact" and curvature != "hessian":
        raise ValueError(f"method='exact' computes the Hessian's trace: use curvature='hessian', got {curvature!r}")
    fallback = None
    with probe.session(model, params) as s:
        if method in ("exact", "auto") and curvature == "hessian":
            try:
                diag = session_hessian_diagonal(s)
            except (ImportError, ExactUnsupportedError) as exc:
                if method == "exact":
                    raise
                fallback = str(exc)
            else:
                exact = diagonal_result(diag, s.space)
                return HessianTraceResult(exact.value, 0.0, 0, "exact", s.space.numel, exact.layer_traces)
        elif method == "auto":
            fallback = f"the exact method computes the Hessian's trace, not the {curvature}'s"
        ran = "hutchinson" if method == "hutchinson" else "hutch++"
        estimator = hutchpp if ran == "hutch++" else hutchinson
        matvec = curvature_operator(s, curvature, seed)
        est = estimator(matvec, s.space.numel, num_matvecs=num_hvps, seed=seed, dtype=s.dtype, device=s.base[0].device)
        return HessianTraceResult(
            est.value, est.stderr, s.num_hvps, ran, s.space.numel, fallback=fallback, curvature=curvature
        )


@dataclass
class HessianDensityResult:
    """Eigenvalue density of the Hessian by stochastic Lanczos quadrature.

    Attributes:
        nodes: ``(runs, m)`` quadrature nodes (Ritz values).
        weights: ``(runs, m)`` quadrature weights (each row sums to 1).
        grid: points where the smoothed density is evaluated.
        density: Gaussian-smoothed density on ``grid``, averaged over runs (integrates to ≈1).
        sigma: smoothing width.
        negative_mass: share of the absolute spectral mass at negative eigenvalues, ``Σ_{λ<0}|λ| / Σ|λ|``
            (robust to the cluster of eigenvalues at zero).
        negative_fraction: estimated fraction of eigenvalues below ``-0.01·max|λ|``.
        trace: SLQ's estimate of ``tr(H)`` (``P · Σ τ θ``).
        num_hvps: Hessian-vector products used.
        num_params: dimension of the Hessian.
        mask: ``(runs, m)``, False at the padding of runs that ended early (an invariant Krylov
            space: a small or low-rank Hessian); padded nodes are 0 with weight 0 and are not
            eigenvalues, so the extremes and the grid ignore them.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    density: torch.Tensor
    sigma: float
    negative_mass: float
    negative_fraction: float
    trace: float
    num_hvps: int
    num_params: int
    mask: torch.Tensor | None = None

    def _real(self) -> torch.Tensor:
        return self.nodes[self.mask] if self.mask is not None else self.nodes.reshape(-1)

    @property
    def lambda_max(self) -> float:
        """Largest node: a lower bound on λ_max that converges fast."""
        return float(self._real().max())

    @property
    def lambda_min(self) -> float:
        """Smallest node: an upper bound on λ_min."""
        return float(self._real().min())

    def scalars(self) -> dict[str, float]:
        """Named scalars for logging."""
        return {
            "negative_mass": self.negative_mass,
            "negative_fraction": self.negative_fraction,
            "trace": self.trace,
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "num_hvps": float(self.num_hvps),
        }


@dataclass(frozen=True)
class DensityOptions:
    """The quadrature options of :func:`hessian_density`, validated once (the
    :class:`~ignite_landscape.HessianDensity` handler builds the same object at construction).

    Attributes:
        num_steps: Lanczos steps per run (``≥ 1``).
        num_runs: random start vectors (``≥ 1``).
        grid_size: points of the density grid (``≥ 2``).
        sigma: Gaussian smoothing width (positive), or ``None`` for 1% of the node range.

    Raises:
        TypeError, ValueError: for an option of the wrong type or value (naming it).
    """

    num_steps: int = 30
    num_runs: int = 4
    grid_size: int = 512
    sigma: float | None = None

    def __post_init__(self) -> None:
        check_int("num_steps", self.num_steps, 1)
        check_int("num_runs", self.num_runs, 1)
        check_int("grid_size", self.grid_size, 2)
        if self.sigma is not None:
            object.__setattr__(self, "sigma", check_positive("sigma", self.sigma))


def hessian_density(
    model: nn.Module,
    probe: Probe,
    *,
    num_steps: int = 30,
    num_runs: int = 4,
    grid_size: int = 512,
    sigma: float | None = None,
    params: ParamsArg = None,
    seed: int = 0,
    curvature: str = "hessian",
) -> HessianDensityResult:
    """Eigenvalue density by stochastic Lanczos quadrature, averaged over ``num_runs`` vectors.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        num_steps: Lanczos steps per run (quadrature exact for polynomials of degree ``2·num_steps − 1``).
        num_runs: random start vectors averaged.
        grid_size: points of the density grid.
        sigma: Gaussian smoothing width; default 1% of the node range.
        params: restrict to a subset of parameters.
        seed: seed of the start vectors.
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
    """
    DensityOptions(num_steps, num_runs, grid_size, sigma)
    check_curvature(curvature)
    with probe.session(model, params) as s:
        q: Quadrature = stochastic_lanczos_quadrature(
            curvature_operator(s, curvature, seed),
            s.space.numel,
            num_steps=num_steps,
            num_runs=num_runs,
            seed=seed,
            dtype=s.dtype,
            device=s.base[0].device,
        )
        used, n = s.num_hvps, s.space.numel
    finite = torch.isfinite(q.nodes).all()
    lo, hi = (q.lambda_min, q.lambda_max) if finite else (0.0, 1.0)
    width = hi - lo if hi > lo else max(abs(hi), 1.0)
    if sigma is None:
        sigma = 0.01 * width
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size, dtype=torch.float64)
    density = gaussian_density(q, grid, sigma) if finite else torch.full_like(grid, float("nan"))
    return HessianDensityResult(
        nodes=q.nodes,
        weights=q.weights,
        grid=grid,
        density=density,
        sigma=sigma,
        negative_mass=q.negative_mass if finite else float("nan"),
        negative_fraction=q.negative_fraction() if finite else float("nan"),
        trace=n * q.moment(1) if finite else float("nan"),
        num_hvps=used,
        num_params=n,
        mask=q.mask,
    )


@dataclass
class LayerCurvature:
    """Curvature of the Hessian block of one layer (its parameters only, the rest held fixed).

    Attributes:
        name: the module name (``""`` for parameters of the root module).
        num_params: parameters in the block.
        lambda_max: top eigenvalue of the block.
        trace: trace of the block (exact for blocks of at most ``exact_below`` parameters, else Hutch++).
        trace_stderr: standard error of ``trace`` (0 when exact).
        num_hvps: Hessian-vector products used for this layer.
    """

    name: str
    num_params: int
    lambda_max: float
    trace: float
    trace_stderr: float
    num_hvps: int
    parameters: list[str] = field(default_factory=list)


def layerwise_curvature(
    model: nn.Module,
    probe: Probe,
    *,
    tol: float = 1e-4,
    trace_hvps: int = 30,
    exact_below: int = 64,
    seed: int = 0,
    trace_method: str = "hutch++",
) -> list[LayerCurvature]:
    """Top eigenvalue and trace of the Hessian block of each layer that owns trainable parameters.

    Blocks with at most ``exact_below`` parameters are formed densely from HVPs against unit vectors
    (exact); larger ones use Lanczos (λ_max) and Hutch++ (trace). With ``trace_method="exact"`` every
    trace comes from one exact Hessian diagonal (:func:`~ignite_landscape.hessian_diagonal`; it raises
    where that is unsupported); ``"auto"`` uses it where supported and Hutch++ otherwise.
    """
    if trace_method not in ("hutch++", "exact", "auto"):
        raise ValueError(f"trace_method must be one of ('hutch++', 'exact', 'auto'), got {trace_method!r}")
    exact_traces: dict[str, float] = {}
    if trace_method != "hutch++":
        with probe.session(model) as s:
            try:
                exact_traces = diagonal_result(session_hessian_diagonal(s), s.space).layer_traces
            except (ImportError, ExactUnsupportedError):
                if trace_method == "exact":
                    raise
    rows = []
    for owner, names in ParamSpace.from_model(model).module_groups().items():
        with probe.session(model, names) as s:
            n = s.space.numel
            if owner in exact_traces and n > exact_below:
                lres = lanczos(s.hvp, n, k=1, tol=tol, seed=seed, dtype=s.dtype, device=s.base[0].device)
                lam, tr, err = float(lres.eigenvalues[0]), exact_traces[owner], 0.0
            elif n <= exact_below:
                eye = torch.eye(n, dtype=s.dtype, device=s.base[0].device)
                H = torch.stack([s.hvp(eye[i]) for i in range(n)]).double().cpu()
                H = 0.5 * (H + H.T)
                lam = float(torch.linalg.eigvalsh(H)[-1])
                tr, err = float(H.trace()), 0.0
            else:
                lres = lanczos(s.hvp, n, k=1, tol=tol, seed=seed, dtype=s.dtype, device=s.base[0].device)
                lam = float(lres.eigenvalues[0])
                est = hutchpp(
                    s.hvp, n, num_matvecs=max(trace_hvps, 6), seed=seed, dtype=s.dtype, device=s.base[0].device
                )
                tr, err = est.value, est.stderr
            rows.append(LayerCurvature(owner, n, lam, tr, err, s.num_hvps, list(names)))
    return rows


def eigenspace_overlap(previous: torch.Tensor, current: torch.Tensor) -> tuple[float, float]:
    """How far the span of ``current`` has turned away from the span of ``previous``.

    Both are ``(k, P)`` with orthonormal rows (e.g. top-k eigenvectors at two firings). Returns
    ``(‖U_t U_{t−1}ᵀ‖²_F / k, θ_max)``: the overlap is the mean squared cosine of the k principal angles
    (1 for the same subspace, about k/P for unrelated random ones), and ``θ_max`` is the largest
    principal angle in radians, computed as ``atan2(σ_max((I − P_{t−1}) U_t), σ_min(U_t U_{t−1}ᵀ))``
    so that small angles keep their digits (an ``arccos`` of a cosine near 1 would lose them).

    Raises:
        ValueError: if the shapes differ or are not 2-D.

    Example:
        >>> import math, torch
        >>> e = torch.eye(3, dtype=torch.float64)
        >>> t = 0.3
        >>> turned = torch.stack([math.cos(t) * e[0] + math.sin(t) * e[2], e[1]])
        >>> overlap, angle = eigenspace_overlap(e[:2], turned)
        >>> round(overlap, 12) == round((math.cos(t) ** 2 + 1) / 2, 12), round(angle, 12)
        (True, 0.3)
    """
    if previous.dim() != 2 or previous.shape != current.shape:
        raise ValueError(
            f"previous and current must both be (k, P), got {tuple(previous.shape)} and {tuple(current.shape)}"
        )
    a, b = previous.double(), current.double()
    M = b @ a.T
    overlap = float((M**2).sum()) / b.shape[0]
    cos_min = float(torch.linalg.svdvals(M).min())
    sin_max = float(torch.linalg.matrix_norm(b - M @ a, ord=2))
    return overlap, math.atan2(sin_max, cos_min)


def preconditioned_eigenvalues(
    model: nn.Module,
    probe: Probe,
    preconditioner: torch.Tensor | Mapping[str, torch.Tensor],
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-4,
    *,
    max_iter: int | None = None,
    params: ParamsArg = None,
    seed: int = 0,
    v0: torch.Tensor | None = None,
    return_eigenvectors: bool = False,
) -> HessianEigenvalues:
    """Extreme eigenvalues of ``P⁻¹H`` for a diagonal positive preconditioner ``P``.

    ``P⁻¹H`` is not symmetric, but it is similar to ``P^{-1/2} H P^{-1/2}`` (same eigenvalues), which
    is, so Lanczos runs on ``v ↦ d ⊙ H(d ⊙ v)`` with ``d = P^{-1/2}``. With Adam's preconditioner
    ``P = (1 − β₁ᵗ)·diag(√v̂ + ε)`` (see :func:`~ignite_landscape.handlers.spectrum.adam_preconditioner`)
    this is the preconditioned sharpness whose edge of stability is
    ``(2 + 2β₁)/((1 − β₁)η)`` (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability").

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        preconditioner: the diagonal of ``P``, flat (order of the selected parameters) or ``{name: tensor}``;
            every entry must be finite and positive.
        k, which, tol, max_iter, params, seed: as in :func:`hessian_eigenvalues`.
        v0: start vector or block for the symmetric operator (e.g. last time's eigenvector).
        return_eigenvectors: also return the eigenvectors ``y`` of the symmetric operator (those of
            ``P⁻¹H`` are ``P^{-1/2} y``).

    Raises:
        ValueError: if the preconditioner has the wrong size or a non-positive or non-finite entry.

    Example:
        >>> import torch
        >>> from ignite_landscape import Probe
        >>> model = torch.nn.Linear(3, 1).double()
        >>> x = torch.randn(16, 3, dtype=torch.float64)
        >>> probe = Probe((x, torch.zeros(16, 1, dtype=torch.float64)), torch.nn.functional.mse_loss)
        >>> res = preconditioned_eigenvalues(model, probe, torch.full((4,), 2.0, dtype=torch.float64), k=1)
        >>> plain = hessian_eigenvalues(model, probe, k=1)
        >>> abs(res.lambda_max - plain.lambda_max / 2) < 1e-6 * plain.lambda_max
        True
    """
    with probe.session(model, params) as s:
        if isinstance(preconditioner, Mapping):
            flat = s.space.flatten(preconditioner)
        elif isinstance(preconditioner, torch.Tensor):
            flat = preconditioner.reshape(-1)
        else:
            kind = type(preconditioner).__name__
            raise TypeError(f"preconditioner must be a tensor or a name->tensor mapping, got {kind}")
        if flat.numel() != s.space.numel:
            raise ValueError(f"preconditioner must have {s.space.numel} entries, got {flat.numel()}")
        if not bool(torch.isfinite(flat).all()) or not bool((flat > 0).all()):
            raise ValueError("preconditioner entries must be finite and positive")
        d = flat.detach().to(dtype=s.dtype, device=s.base[0].device).rsqrt()
        return _session_eigenvalues(
            s, lambda v: d * s.hvp(d * v), k, which, tol, max_iter, v0, seed, return_eigenvectors
        )
