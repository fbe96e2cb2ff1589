"""The Hessian's Gauss-Newton decomposition ``H = G + R`` and the outliers of the GGN spectrum (Papyan 2019/2020).

For a classifier trained with the cross-entropy, the spectrum of the Gauss-Newton matrix ``G`` shows a
bulk near zero and a few outliers separated from it; Papyan traces about ``C`` of them (``C`` classes) to
the class means of the logit gradients. :func:`count_outliers` is the separation rule used here, and
:func:`ggn_decomposition` reports λ_max and the trace of ``H``, ``G`` and ``R = H − G`` together with
the number of outliers of ``G`` against the number of classes.

**The separation rule.** Given the top ``m`` eigenvalues ``λ_1 ≥ … ≥ λ_m`` of a positive semi-definite
matrix, the spectrum *breaks* after position ``j`` when ``λ_j ≥ ratio · λ_{j+1}`` (default ``ratio = 2``),
where eigenvalues below ``zero_tol · λ_1`` count as zero (and a positive eigenvalue followed by a zero
is a break). The number of outliers is the deepest break, the largest such ``j`` (0 if there is none):
inside a continuous bulk neighbouring eigenvalues differ by far less than a factor 2, while the
outliers themselves may be spread over orders of magnitude, so the deepest break, not the largest one,
marks the bulk's edge. ``m`` must reach into the bulk (default ``2C + 2``); a break at ``j = m − 1``
would be indistinguishable from a sparse bulk edge and is reported as such by :attr:`GGNDecomposition.at_edge`.

Example:
    >>> import torch
    >>> count_outliers(torch.tensor([40.0, 9.0, 7.0, 5.0, 1.0, 0.9, 0.8, 0.7]))
    4
    >>> count_outliers(torch.tensor([1.0, 0.9, 0.8, 0.7]))
    0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from ignite_landscape.curvature import curvature_operator, prediction
from ignite_landscape.linalg import hutchpp, lanczos
from ignite_landscape.measures._definitions import ranked
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe
from ignite_landscape.results import Result
from ignite_landscape.validation import check_int, check_nonnegative, check_positive

__all__ = ["GGNDecomposition", "GGNOptions", "count_outliers", "ggn_decomposition", "measure_ggn_decomposition"]


def count_outliers(eigenvalues: torch.Tensor, ratio: float = 2.0, zero_tol: float = 1e-10) -> int:
    """Number of outliers of a PSD spectrum's top eigenvalues by the deepest-break rule (module docstring).

    Args:
        eigenvalues: the top ``m`` eigenvalues (any order; sorted descending here).
        ratio: the factor between neighbours that makes a break (``> 1``).
        zero_tol: eigenvalues below ``zero_tol · λ_1`` count as zero.

    Raises:
        ValueError: if ``ratio ≤ 1``, ``zero_tol < 0`` or ``eigenvalues`` is not a non-empty 1-D tensor.
        TypeError: if ``zero_tol`` is not a number.
    """
    if not (isinstance(ratio, (int, float)) and ratio > 1):
        raise ValueError(f"ratio must be a number above 1, got {ratio!r}")
    check_nonnegative("zero_tol", zero_tol)
    if not isinstance(eigenvalues, torch.Tensor) or eigenvalues.dim() != 1 or eigenvalues.numel() == 0:
        raise ValueError("eigenvalues must be a non-empty 1-D tensor")
    lam = eigenvalues.detach().double().cpu().sort(descending=True).values
    top = float(lam[0])
    if not top > 0:
        return 0
    lam = torch.where(lam < zero_tol * top, torch.zeros_like(lam), lam)
    count = 0
    for j in range(lam.numel() - 1):
        a, b = float(lam[j]), float(lam[j + 1])
        if a > 0 and a >= ratio * b:
            count = j + 1
    return count


# The fields of GGNDecomposition that are not logged as scalars (a tensor, and a flag the definitions state).
_NOT_SCALARS = ("ggn_eigenvalues", "at_edge")


@dataclass
class GGNDecomposition(Result):
    """``H = G + R`` at the current weights, and the outliers of ``G``'s spectrum.

    Attributes:
        lambda_max_hessian: λ_max of ``H``.
        lambda_max_ggn: λ_max of ``G``.
        lambda_max_residual: λ_max of ``R = H − G``.
        lambda_min_residual: λ_min of ``R`` (``R`` is indefinite in general).
        trace_hessian: ``tr(H)`` (Hutch++).
        trace_ggn: ``tr(G)`` (Hutch++).
        trace_residual: ``tr(H) − tr(G)``.
        trace_stderr: standard error of each trace estimate (the larger of the two).
        ggn_eigenvalues: the top ``m`` eigenvalues of ``G`` (descending, float64).
        num_outliers: outliers of ``G`` by :func:`count_outliers`.
        num_classes: number of classes (the output width), or 0 when the outputs are not class scores.
        at_edge: whether the deepest break sits at the last computed eigenvalue (raise ``k`` to be sure).
        num_hvps: curvature-vector products used.
    """

    kind = "ggn"

    lambda_max_hessian: float
    lambda_max_ggn: float
    lambda_max_residual: float
    lambda_min_residual: float
    trace_hessian: float
    trace_ggn: float
    trace_residual: float
    trace_stderr: float
    ggn_eigenvalues: torch.Tensor
    num_outliers: int
    num_classes: int
    at_edge: bool
    num_hvps: int

    def scalars(self) -> dict[str, float]:
        """Every scalar field (counts as floats) and the GGN eigenvalues ``ggn_lambda_1`` … ``ggn_lambda_k``."""
        # In field order; a field added to the decomposition is logged without a second list to keep in step.
        out = {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name not in _NOT_SCALARS}
        out.update({f"ggn_lambda_{i}": float(v) for i, v in enumerate(self.ggn_eigenvalues.tolist(), 1)})
        return out

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key of ``H = G + R`` and the outlier count."""
        k = int(self.ggn_eigenvalues.numel())
        edge = "; the break is at the last computed eigenvalue, so raise k to be sure" if self.at_edge else ""
        out = {
            "lambda_max_hessian": "largest eigenvalue of the Hessian H of the probe loss (Lanczos)",
            "lambda_max_ggn": "largest eigenvalue of the generalised Gauss-Newton matrix G = JᵀH_out J (Lanczos)",
            "lambda_max_residual": "largest eigenvalue of the residual R = H − G, the network's own second derivatives",
            "lambda_min_residual": "smallest eigenvalue of the residual R = H − G (R is indefinite in general)",
            "trace_hessian": "tr(H), Hutch++ estimate",
            "trace_ggn": "tr(G), Hutch++ estimate",
            "trace_residual": "tr(R) = tr(H) − tr(G)",
            "trace_stderr": "standard error of the trace estimates (the larger of those of tr(H) and tr(G))",
            "num_outliers": (
                f"outliers of G's spectrum (Papyan 2019): the deepest break λ_j ≥ ratio·λ_(j+1) among its top k = {k} "
                f"eigenvalues (count_outliers){edge}"
            ),
            "num_classes": "classes C of the outputs (their width), 0 when the outputs are not class scores",
            "num_hvps": "curvature-vector products used (of H, G and R)",
        }
        for i in range(1, k + 1):
            out[f"ggn_lambda_{i}"] = f"the {ranked(i)} eigenvalue of G (Lanczos)"
        return out


@dataclass(frozen=True)
class GGNOptions:
    """The options of :func:`ggn_decomposition`, validated once.

    The :class:`~ignite_landscape.GGNOutliers` handler builds the same object at construction.

    Attributes:
        k: top GGN eigenvalues computed (``None``: ``2C + 2`` for ``C`` classes, else 12).
        tol: Lanczos tolerance relative to each eigenvalue.
        trace_hvps: products per Hutch++ trace estimate (of ``H`` and of ``G``; at least 6).
        ratio: the break factor of :func:`count_outliers` (above 1).

    Raises:
        TypeError, ValueError: for an option of the wrong type or value (naming it).
    """

    k: int | None = None
    tol: float = 1e-4
    trace_hvps: int = 60
    ratio: float = 2.0

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        if self.k is not None:
            check_int("k", self.k, 1)
        object.__setattr__(self, "tol", check_positive("tol", self.tol))
        check_int("trace_hvps", self.trace_hvps, 6)
        if not check_positive("ratio", self.ratio) > 1:
            raise ValueError(f"ratio must be above 1, got {self.ratio}")
        object.__setattr__(self, "ratio", float(self.ratio))

    def check_space(self, space: Any) -> None:
        """Raise if ``k`` is not below the number of selected parameters."""
        if self.k is not None and self.k >= space.numel:
            raise ValueError(f"k must be smaller than the number of parameters ({space.numel}), got {self.k}")


def ggn_decomposition(
    model: nn.Module,
    probe: Probe,
    k: int | None = None,
    *,
    tol: float = 1e-4,
    trace_hvps: int = 60,
    ratio: float = 2.0,
    params: ParamsArg = None,
    seed: int = 0,
) -> GGNDecomposition:
    """λ_max and trace of ``H``, ``G`` and ``R = H − G``, and the number of outliers of ``G``'s spectrum.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        k: how many top eigenvalues of ``G`` to compute (default ``2C + 2`` for ``C`` classes, else 12).
        tol: Lanczos tolerance relative to each eigenvalue.
        trace_hvps: products per Hutch++ trace estimate (of ``H`` and of ``G``).
        ratio: the break factor of :func:`count_outliers`.
        params: restrict to a subset of parameters.
        seed: seed of the start and probe vectors.

    Raises:
        ValueError: if ``k`` is out of range or ``ratio ≤ 1``.
    """
    return measure_ggn_decomposition(model, probe, GGNOptions(k, tol, trace_hvps, ratio), seed, params)


def measure_ggn_decomposition(
    model: nn.Module, probe: Probe, options: GGNOptions, seed: int = 0, params: ParamsArg = None
) -> GGNDecomposition:
    """:func:`ggn_decomposition` on validated options (the :class:`~ignite_landscape.GGNOutliers` handler runs it).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
        >>> probe = Probe((torch.randn(30, 4).double(), torch.randint(0, 3, (30,))), torch.nn.CrossEntropyLoss())
        >>> res = measure_ggn_decomposition(model, probe, GGNOptions(k=4))
        >>> res.num_classes, abs(res.trace_hessian - res.trace_ggn - res.trace_residual) < 1e-9
        (3, True)
    """
    k, tol, trace_hvps, ratio = options.k, options.tol, options.trace_hvps, options.ratio
    with probe.session(model, params) as s:
        n = s.space.numel
        x, y, _ = probe.batches()[0]
        with torch.no_grad():
            out = prediction(s, s.forward(x, s.base, 0))
        classes = int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else 0
        if k is None:
            k = min(2 * classes + 2 if classes else 12, n - 1)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
            raise ValueError(f"k must be an int in [1, {n - 1}], got {k!r}")
        hvp = s.hvp
        ggn = curvature_operator(s, "ggn", seed)

        def residual(v: torch.Tensor) -> torch.Tensor:
            return hvp(v) - ggn(v)

        common = {"seed": seed, "dtype": s.dtype, "device": s.device}
        lam_h = float(lanczos(hvp, n, k=1, tol=tol, **common).eigenvalues[0])
        g_res = lanczos(ggn, n, k=k, tol=tol, **common)
        r_res = lanczos(residual, n, k=1, which="both", tol=tol, **common)
        tr_h = hutchpp(hvp, n, num_matvecs=trace_hvps, **common)
        tr_g = hutchpp(ggn, n, num_matvecs=trace_hvps, **common)
        used = s.num_hvps
    ggn_eigs = g_res.eigenvalues.double().cpu()
    outliers = count_outliers(ggn_eigs, ratio=ratio)
    return GGNDecomposition(
        lambda_max_hessian=lam_h,
        lambda_max_ggn=float(ggn_eigs[0]),
        lambda_max_residual=float(r_res.eigenvalues.max()),
        lambda_min_residual=float(r_res.eigenvalues.min()),
        trace_hessian=tr_h.value,
        trace_ggn=tr_g.value,
        trace_residual=tr_h.value - tr_g.value,
        trace_stderr=max(tr_h.stderr, tr_g.stderr) if math.isfinite(tr_h.stderr) else tr_h.stderr,
        ggn_eigenvalues=ggn_eigs,
        num_outliers=outliers,
        num_classes=classes,
        at_edge=outliers == ggn_eigs.numel() - 1,
        num_hvps=used,
    )
