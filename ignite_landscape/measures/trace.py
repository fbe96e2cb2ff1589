"""Hessian trace of a model on a probe: Hutchinson, Hutch++ or the exact diagonal summed.

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> x = torch.randn(16, 3, dtype=torch.float64)
    >>> probe = Probe((x, torch.zeros(16, 1, dtype=torch.float64)), torch.nn.functional.mse_loss)
    >>> res = hessian_trace(torch.nn.Linear(3, 1).double(), probe, method="hutch++", num_hvps=12)
    >>> # H = 2/N·[XᵀX, Xᵀ1; 1ᵀX, N] has rank 4 = P, which Hutch++'s 4-vector sketch captures exactly
    >>> res.method, abs(res.value - float(2 * (x**2).sum() / 16 + 2)) < 1e-9
    ('hutch++', True)
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from ignite_landscape.curvature import check_curvature, curvature_operator
from ignite_landscape.linalg import TRACE_METHODS, hutchinson, hutchpp
from ignite_landscape.measures._definitions import band_definitions, curvature_name, products
from ignite_landscape.measures.diagonal import ExactUnsupportedError, diagonal_result, session_hessian_diagonal
from ignite_landscape.measures.jackknife import (
    JACKKNIFE_CHUNKS,
    check_uncertainty,
    interval,
    interval_scalars,
    jackknife_rerun,
)
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe
from ignite_landscape.results import Result
from ignite_landscape.validation import check_choice, check_int

__all__ = ["HessianTraceResult", "TraceOptions", "hessian_trace", "measure_hessian_trace"]


@dataclass
class HessianTraceResult(Result):
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
        jackknife_chunks: the probe chunks of the jackknife (0 without ``uncertainty``).
    """

    kind: ClassVar[str] = "trace"

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
    jackknife_chunks: int = 0

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

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key, with the matrix, the method and its budget."""
        matrix = curvature_name(self.curvature)
        if self.method == "exact":
            how = "exactly, as the sum of the exact Hessian diagonal (BackPACK)"
            own = "0: the exact trace has no estimator error"
        else:
            name = "Hutch++ (Meyer et al. 2021)" if self.method == "hutch++" else "Hutchinson's estimator"
            how = f"by {name} on {self.num_hvps} {products(self.curvature)} with Rademacher vectors"
            own = "standard error of the stochastic estimate, from the spread of its Rademacher-vector terms"
        if self.fallback:
            how += f" (method='auto' fell back from the exact method: {self.fallback})"
        out = {
            "value": f"trace of the {matrix} of the probe loss over its {self.num_params} parameters, {how}",
            "mean_eigenvalue": f"value / {self.num_params}: the mean eigenvalue of the {matrix}",
            "num_hvps": f"{products(self.curvature)} used by the estimate (0 for the exact trace)",
        }
        if self.uncertainty is not None:
            chunks = self.jackknife_chunks
            out.update(band_definitions("value", "the trace", chunks, stderr_key="stderr"))
            out["stderr"] += " (the same random vectors on every subset)"
            out["estimator_stderr"] = f"the estimator's own error: {own}"
            out["uncertainty_hvps"] = (
                f"{products(self.curvature)} of the {chunks or 'K'} leave-one-chunk-out runs (not in num_hvps)"
            )
        else:
            out["stderr"] = own
        return out


@dataclass(frozen=True)
class TraceOptions:
    """The method and budget of :func:`hessian_trace`, validated once.

    The :class:`~ignite_landscape.HessianTrace` handler builds the same object at construction.

    Attributes:
        method: ``"hutch++"``, ``"hutchinson"``, ``"exact"`` or ``"auto"``.
        num_hvps: budget of Hessian-vector products: at least 6 for Hutch++ and ``"auto"`` (which may
            fall back to it: a sketch, its products and a Hutchinson part of at least 2), at least 2 for
            Hutchinson (for a standard error), unused by ``"exact"``.

        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``; ``"exact"`` is for the Hessian.
        uncertainty: ``"jackknife"``: ``stderr`` is the jackknife standard error over the probe's samples
            (``jackknife_chunks`` more runs on the probe without one chunk, with the same random vectors), and
            the estimator's own goes to ``estimator_stderr``; ``None``: the estimator's standard error.
        jackknife_chunks: ``K``, the chunks of the jackknife (``2 ≤ K ≤`` the probe's samples).

    Raises:
        TypeError: for a non-int ``num_hvps`` or ``jackknife_chunks``.
        ValueError: for an unknown method, curvature or uncertainty, a budget too small for the method, or
            ``method="exact"`` with another curvature than the Hessian.
    """

    method: str = "hutch++"
    num_hvps: int = 60
    curvature: str = "hessian"
    uncertainty: str | None = None
    jackknife_chunks: int = JACKKNIFE_CHUNKS

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work (``ValueError``/``TypeError``)."""
        check_choice("method", self.method, (*TRACE_METHODS, "exact", "auto"))
        check_int("num_hvps", self.num_hvps, {"hutchinson": 2, "exact": 1}.get(self.method, 6))
        check_curvature(self.curvature)
        if self.method == "exact" and self.curvature != "hessian":
            raise ValueError(
                f"method='exact' computes the Hessian's trace: use curvature='hessian', got {self.curvature!r}"
            )
        check_uncertainty(self.uncertainty, self.jackknife_chunks)

    def check_probe(self, probe: Probe) -> None:
        """Raise if the jackknife cannot work on ``probe`` (more chunks than samples, a sharded probe)."""
        check_uncertainty(self.uncertainty, self.jackknife_chunks, probe)


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
    options = TraceOptions(method, num_hvps, curvature, uncertainty, jackknife_chunks)
    options.check_probe(probe)
    return measure_hessian_trace(model, probe, options, seed, params)


def measure_hessian_trace(
    model: nn.Module, probe: Probe, options: TraceOptions, seed: int = 0, params: ParamsArg = None
) -> HessianTraceResult:
    """:func:`hessian_trace` on validated options (the caller runs ``options.check_probe(probe)``, once).

    Example:
        >>> import torch
        >>> probe = Probe((torch.randn(16, 3).double(), torch.randn(16, 1).double()), torch.nn.MSELoss())
        >>> res = measure_hessian_trace(torch.nn.Linear(3, 1).double(), probe, TraceOptions("hutchinson", 8))
        >>> res.method, res.num_hvps
        ('hutchinson', 8)
    """
    method, num_hvps, curvature = options.method, options.num_hvps, options.curvature
    uncertainty, jackknife_chunks = options.uncertainty, options.jackknife_chunks
    if uncertainty is not None:
        single = dataclasses.replace(options, uncertainty=None)
        full = measure_hessian_trace(model, probe, single, seed, params)
        rerun = functools.partial(measure_hessian_trace, model, options=single, seed=seed, params=params)
        stderr, loo = jackknife_rerun("trace", full.value, rerun, probe, jackknife_chunks)
        return dataclasses.replace(
            full,
            stderr=stderr,
            uncertainty=uncertainty,
            estimator_stderr=full.stderr,
            uncertainty_hvps=sum(r.num_hvps for r in loo),
            jackknife_chunks=jackknife_chunks,
        )
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
        est = estimator(matvec, s.space.numel, num_matvecs=num_hvps, seed=seed, dtype=s.dtype, device=s.device)
        return HessianTraceResult(
            est.value, est.stderr, s.num_hvps, ran, s.space.numel, fallback=fallback, curvature=curvature
        )
