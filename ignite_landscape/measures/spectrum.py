"""Extreme Hessian eigenvalues of a model on a probe (Lanczos), preconditioned ones and eigenspace overlap.

They use exact Hessian-vector products from :class:`~ignite_landscape.probe.ProbeSession` and the
matrix-free routines of :mod:`ignite_landscape.linalg`. The trace (:mod:`~ignite_landscape.measures.trace`),
the density (:mod:`~ignite_landscape.measures.density`) and the per-layer table
(:mod:`~ignite_landscape.measures.layerwise`) live in their own modules and are re-exported here.

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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from ignite_landscape.curvature import check_curvature, curvature_operator
from ignite_landscape.linalg import lanczos
from ignite_landscape.measures._definitions import (
    band_definitions,
    curvature_name,
    jackknife_phrase,
    num,
    products,
    ranked,
)
from ignite_landscape.measures.density import DensityOptions, HessianDensityResult, hessian_density
from ignite_landscape.measures.jackknife import (
    JACKKNIFE_CHUNKS,
    check_uncertainty,
    interval,
    interval_scalars,
    jackknife_stderr,
    leave_one_out_probes,
    warn_if_wide,
)
from ignite_landscape.measures.layerwise import LayerCurvature, layerwise_curvature
from ignite_landscape.measures.trace import HessianTraceResult, TraceOptions, hessian_trace
from ignite_landscape.params import ParamsArg, ParamSpace
from ignite_landscape.probe import Probe, ProbeSession
from ignite_landscape.results import Curve, Result
from ignite_landscape.validation import check_choice, check_int, check_positive

__all__ = [
    "HessianEigenvalues",
    "HessianTraceResult",
    "HessianDensityResult",
    "TraceOptions",
    "DensityOptions",
    "SpectrumOptions",
    "LayerCurvature",
    "hessian_eigenvalues",
    "measure_hessian_eigenvalues",
    "hessian_trace",
    "hessian_density",
    "layerwise_curvature",
    "preconditioned_eigenvalues",
    "eigenspace_overlap",
]


@dataclass
class HessianEigenvalues(Result):
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
        curvature: the matrix (``"hessian"``, ``"ggn"``, ``"fisher"``, ``"empirical_fisher"``).
        jackknife_chunks: the probe chunks of the jackknife behind ``stderr`` (0 without it).
    """

    kind: ClassVar[str] = "spectrum"

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
    curvature: str = "hessian"
    jackknife_chunks: int = 0

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
        return None if self.stderr is None else interval(self.eigenvalues, self.stderr)

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

    def curves(self) -> dict[str, Curve]:
        """``eigenvalues``: the eigenvalues found, as a histogram (non-finite ones left out)."""
        values = self.eigenvalues.detach().cpu().double()
        return {"eigenvalues": Curve("histogram", x=values[torch.isfinite(values)], xlabel="eigenvalue")}

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar and curve key, with the matrix, the tolerance and the products used.

        The sentences do not change from firing to firing (how many products a firing used is its own scalar,
        ``num_hvps``), so a handler's history shares one copy of them.
        """
        matrix = curvature_name(self.curvature)
        how = (
            f"of the {matrix} of the probe loss, by block Lanczos with full reorthogonalisation on "
            f"exact {products(self.curvature)} (tol {num(self.tol)}; how many: num_hvps)"
        )
        values = self.eigenvalues.tolist()
        k = len(values) // 2 if self.which == "both" else len(values)
        out: dict[str, str] = {}
        if self.which == "smallest":
            for i in range(1, len(values) + 1):
                out[f"lambda_min_{i}"] = f"the {ranked(i, 'smallest')} eigenvalue {how}"
            out["lambda_min"] = f"the smallest (most negative) eigenvalue {how}; equals lambda_min_1"
        else:
            out["lambda_max"] = f"the largest eigenvalue {how}; equals lambda_1"
            for i in range(1, k + 1):
                out[f"lambda_{i}"] = f"the {ranked(i)} eigenvalue {how}"
            if self.which == "both":
                out["lambda_min"] = f"the smallest eigenvalue {how}"
        out["num_hvps"] = f"{products(self.curvature)} used by the Lanczos solve"
        out["max_relative_residual"] = (
            f"largest relative residual ‖Cy − θy‖/|θ| of the reported Ritz pairs (C the {matrix}); each "
            f"eigenvalue lies within its residual of a true one; converged when ≤ tol = {num(self.tol)}"
        )
        if self.stderr is not None:
            chunks = self.jackknife_chunks
            if self.which == "smallest":
                out["lambda_min_stderr"] = f"{jackknife_phrase(chunks)} of lambda_min"
                for i in range(1, len(values) + 1):
                    out.update(band_definitions(f"lambda_min_{i}", f"the {ranked(i, 'smallest')} eigenvalue", chunks))
            else:
                out["lambda_max_stderr"] = f"{jackknife_phrase(chunks)} of lambda_max"
                for i in range(1, k + 1):
                    out.update(band_definitions(f"lambda_{i}", f"the {ranked(i)} eigenvalue", chunks))
                if self.which == "both":
                    out["lambda_min_stderr"] = f"{jackknife_phrase(chunks)} of lambda_min"
            out["uncertainty_hvps"] = (
                f"{products(self.curvature)} of the {chunks or 'K'} leave-one-chunk-out runs behind the "
                "standard errors (not in num_hvps)"
            )
        out["eigenvalues"] = f"histogram of the eigenvalues {how}"
        return out


WHICH = ("largest", "smallest", "both")


@dataclass(frozen=True)
class SpectrumOptions:
    """The options of :func:`hessian_eigenvalues`, validated once.

    The :class:`~ignite_landscape.HessianSpectrum` handler builds the same object at construction.

    Attributes:
        k: eigenvalues per wanted end (``1 ≤ k <`` number of parameters).
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        tol: relative residual tolerance of Lanczos (stop when each wanted Ritz residual is ``≤ tol·|λ|``).
        max_iter: cap on Hessian-vector products (``None``: no cap).
        curvature: the matrix: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
        num_random: random start vectors (``≥ 1``): eigenvalues of up to this multiplicity are found with it
            (on the digits CNN, top-5 at tol 1e-4: 14 HVPs with one, 19 with two).
        uncertainty: ``"jackknife"``: each eigenvalue's jackknife standard error over the probe's samples
            (``jackknife_chunks`` more runs, each on the probe without one chunk); ``None``: none.
        jackknife_chunks: ``K``, the chunks of the jackknife (``2 ≤ K ≤`` the probe's samples).

    Raises:
        TypeError, ValueError: for an option of the wrong type or value (naming it).
    """

    k: int = 5
    which: str = "largest"
    tol: float = 1e-4
    max_iter: int | None = None
    curvature: str = "hessian"
    num_random: int = 2
    uncertainty: str | None = None
    jackknife_chunks: int = JACKKNIFE_CHUNKS

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        check_int("k", self.k, 1)
        check_choice("which", self.which, WHICH)
        object.__setattr__(self, "tol", check_positive("tol", self.tol))
        if self.max_iter is not None:
            check_int("max_iter", self.max_iter, 1)
        check_curvature(self.curvature)
        check_int("num_random", self.num_random, 1)
        check_uncertainty(self.uncertainty, self.jackknife_chunks)

    def check_probe(self, probe: Probe) -> None:
        """Raise if the jackknife cannot work on ``probe`` (more chunks than samples, a sharded probe)."""
        check_uncertainty(self.uncertainty, self.jackknife_chunks, probe)

    def check_space(self, space: ParamSpace) -> None:
        """Raise if ``k`` (``2k`` for ``"both"``) does not fit below the number of selected parameters."""
        n = space.numel
        if self.k >= n or (self.which == "both" and 2 * self.k > n):
            raise ValueError(f"k must be smaller than the number of parameters ({n}), got k={self.k}")


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
    :func:`ignite_landscape.linalg.lanczos`): the start block holds two random vectors (``v0``'s rows
    dealt over them and folded in), so an eigenvalue of multiplicity two is reported twice; ``residuals``
    are recomputed from the products and floored at the working precision, and ``converged`` also requires
    the first Ritz pair beyond the wanted ones to be resolved (to 1%, and well clear of the k-th) and a warm
    start to have explored far enough, so a warm start does not stop before an eigenvalue it never saw would
    show up.

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
            last time's eigenvectors; its first ``k`` rows (``2k`` for ``"both"``) are used and random vectors are
            always added, so it changes the cost, not the answer.
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
    options = SpectrumOptions(k, which, tol, max_iter, curvature, num_random, uncertainty, jackknife_chunks)
    options.check_probe(probe)
    return measure_hessian_eigenvalues(
        model, probe, options, seed, params, v0=v0, return_eigenvectors=return_eigenvectors
    )


def measure_hessian_eigenvalues(
    model: nn.Module,
    probe: Probe,
    options: SpectrumOptions,
    seed: int = 0,
    params: ParamsArg = None,
    *,
    v0: torch.Tensor | None = None,
    return_eigenvectors: bool = False,
) -> HessianEigenvalues:
    """:func:`hessian_eigenvalues` on validated options (the caller runs ``options.check_probe(probe)``, once).

    The :class:`~ignite_landscape.HessianSpectrum` handler runs it with its warm start as ``v0``.

    Example:
        >>> probe = Probe((torch.randn(16, 3).double(), torch.randn(16, 1).double()), torch.nn.MSELoss())
        >>> res = measure_hessian_eigenvalues(torch.nn.Linear(3, 1).double(), probe, SpectrumOptions(k=2))
        >>> res.eigenvalues.shape, bool(res.eigenvalues[0] >= res.eigenvalues[1])
        (torch.Size([2]), True)
    """
    k, which, tol, max_iter, curvature = options.k, options.which, options.tol, options.max_iter, options.curvature
    num_random, uncertainty, jackknife_chunks = options.num_random, options.uncertainty, options.jackknife_chunks
    with probe.session(model, params) as s:
        matvec = curvature_operator(s, curvature, seed)
        full = _session_eigenvalues(
            s, matvec, k, which, tol, max_iter, v0, seed, return_eigenvectors or uncertainty is not None, num_random
        )
    full.curvature = curvature
    if uncertainty is None:
        return full
    single = replace(options, uncertainty=None)
    loo = [
        measure_hessian_eigenvalues(model, part, single, seed, params, v0=full.eigenvectors)
        for part in leave_one_out_probes(probe, jackknife_chunks)
    ]
    full.stderr = jackknife_stderr(torch.stack([r.eigenvalues for r in loo]))
    full.uncertainty_hvps = sum(r.num_hvps for r in loo)
    full.jackknife_chunks = jackknife_chunks
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
        device=s.device,
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
        k: eigenvalues per wanted end, as in :func:`hessian_eigenvalues`.
        which: ``"largest"``, ``"smallest"`` or ``"both"``, as in :func:`hessian_eigenvalues`.
        tol: stop when each wanted Ritz residual is ``≤ tol·|λ|``, as in :func:`hessian_eigenvalues`.
        max_iter: cap on Hessian-vector products, as in :func:`hessian_eigenvalues`.
        params: the parameters measured, as in :func:`hessian_eigenvalues`.
        seed: seed of the random start vectors, as in :func:`hessian_eigenvalues`.
        v0: start vector or block for the symmetric operator (e.g. last time's eigenvector).
        return_eigenvectors: also return the eigenvectors ``y`` of the symmetric operator (those of
            ``P⁻¹H`` are ``P^{-1/2} y``).

    Raises:
        ValueError: if the preconditioner has the wrong size or a non-positive or non-finite entry.

    Example:
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
        d = flat.detach().to(dtype=s.dtype, device=s.device).rsqrt()
        return _session_eigenvalues(
            s, lambda v: d * s.hvp(d * v), k, which, tol, max_iter, v0, seed, return_eigenvectors
        )
