"""How much of the gradient lies in the top-k eigenspace of the curvature (Gur-Ari, Roberts & Dyer 2018).

``gradient_overlap`` returns ``‖P_k g‖² / ‖g‖²`` with ``P_k`` the orthogonal projector onto the top-k
eigenvectors of the chosen curvature matrix (the Hessian by default) and ``g`` the probe gradient, plus
the share of each eigenvector ``(u_iᵀg)²/‖g‖²``. Gur-Ari et al. observe that after a short initial phase
of training the gradient lives mostly in the span of the top eigenvectors, whose number equals the
number of classes. The eigenvectors come from Lanczos, or from a spectrum computed at the same moment
(``eigenvectors=``; the :class:`~ignite_landscape.handlers.GradientOverlap` handler reuses those of a
``HessianSpectrum`` firing at the same event instead of running Lanczos again).

Example:
    >>> import torch
    >>> from ignite_landscape import Probe
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    >>> x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    >>> res = gradient_overlap(model, Probe((x, y), torch.nn.functional.cross_entropy), k=3)
    >>> 0.0 <= res.value <= 1.0, res.overlaps.shape
    (True, torch.Size([3]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ignite_landscape.curvature import check_curvature, curvature_operator
from ignite_landscape.linalg import lanczos
from ignite_landscape.measures._definitions import curvature_name, products
from ignite_landscape.params import ParamsArg
from ignite_landscape.probe import Probe
from ignite_landscape.results import Result
from ignite_landscape.validation import check_int, check_positive

__all__ = ["GradientOverlapResult", "OverlapOptions", "gradient_overlap", "measure_gradient_overlap"]


@dataclass
class GradientOverlapResult(Result):
    """The gradient's overlap with the top-k eigenspace.

    Attributes:
        value: ``‖P_k g‖²/‖g‖²`` in ``[0, 1]`` (NaN for a zero gradient).
        overlaps: ``(k,)`` float64, ``(u_iᵀg)²/‖g‖²`` for each eigenvector, in the order of ``eigenvalues``.
        eigenvalues: ``(k,)`` float64, the eigenvalues of the eigenvectors used (descending).
        grad_norm: ``‖g‖``.
        curvature: the matrix whose eigenvectors span the space.
        num_hvps: curvature-vector products spent here (0 when the eigenvectors were given).
        reused: whether the eigenvectors were given (e.g. by a spectrum handler) rather than computed.
    """

    kind = "overlap"

    value: float
    overlaps: torch.Tensor
    eigenvalues: torch.Tensor
    grad_norm: float
    curvature: str
    num_hvps: int
    reused: bool = False

    @property
    def k(self) -> int:
        """Dimension of the eigenspace."""
        return int(self.overlaps.numel())

    def scalars(self) -> dict[str, float]:
        """Named scalars: ``value``, ``grad_norm``, ``num_hvps`` and ``overlap_1`` … ``overlap_k``."""
        out = {"value": self.value, "grad_norm": self.grad_norm, "num_hvps": float(self.num_hvps)}
        for i, v in enumerate(self.overlaps.tolist(), 1):
            out[f"overlap_{i}"] = v
        return out

    def definitions(self) -> dict[str, str]:
        """One sentence per scalar key, with the matrix, ``k`` and where the eigenvectors came from."""
        matrix = curvature_name(self.curvature)
        source = "given by a spectrum handler" if self.reused else "computed here by Lanczos"
        out = {
            "value": (
                f"‖P_k g‖²/‖g‖²: the share of the probe gradient's squared norm in the span of the top k = {self.k} "
                f"eigenvectors of the {matrix} ({source}); NaN for a zero gradient"
            ),
            "grad_norm": "‖g‖, the norm of the probe gradient",
            "num_hvps": f"{products(self.curvature)} spent here (0 when the eigenvectors were given)",
        }
        for i in range(1, self.k + 1):
            out[f"overlap_{i}"] = f"(u_{i}ᵀg)²/‖g‖², u_{i} the eigenvector of λ_{i} (eigenvalues in descending order)"
        return out


@dataclass(frozen=True)
class OverlapOptions:
    """The options of :func:`gradient_overlap`, validated once.

    The :class:`~ignite_landscape.GradientOverlap` handler builds the same object at construction.

    Attributes:
        k: dimension of the eigenspace (``1 ≤ k <`` number of parameters).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
        tol: Lanczos tolerance on each Ritz residual, relative to the eigenvalue.
        max_iter: cap on Lanczos iterations (``None``: no cap).

    Raises:
        TypeError, ValueError: for an option of the wrong type or value (naming it).
    """

    k: int = 10
    curvature: str = "hessian"
    tol: float = 1e-4
    max_iter: int | None = None

    def __post_init__(self) -> None:
        """Check every option once, naming the one that cannot work, and store the normalised values."""
        check_int("k", self.k, 1)
        check_curvature(self.curvature)
        object.__setattr__(self, "tol", check_positive("tol", self.tol))
        if self.max_iter is not None:
            check_int("max_iter", self.max_iter, 1)

    def check_space(self, space: Any) -> None:
        """Raise if ``k`` is not below the number of selected parameters."""
        if self.k >= space.numel:
            raise ValueError(f"k must be smaller than the number of parameters ({space.numel}), got {self.k}")


def gradient_overlap(
    model: nn.Module,
    probe: Probe,
    k: int = 10,
    *,
    curvature: str = "hessian",
    tol: float = 1e-4,
    max_iter: int | None = None,
    params: ParamsArg = None,
    seed: int = 0,
    eigenvectors: torch.Tensor | None = None,
    eigenvalues: torch.Tensor | None = None,
) -> GradientOverlapResult:
    """``‖P_k g‖²/‖g‖²`` for the top-k eigenvectors of the curvature and the probe gradient ``g``.

    Args:
        model: the model; left exactly as it was.
        probe: the fixed samples and loss.
        k: dimension of the eigenspace (``1 ≤ k <`` number of parameters).
        curvature: ``"hessian"``, ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``.
        tol: Lanczos tolerance on each Ritz residual, relative to the eigenvalue.
        max_iter: cap on Lanczos iterations.
        params: restrict to a subset of parameters.
        seed: seed of the Lanczos start vector (and of the Fisher's labels).
        eigenvectors: ``(m, P)`` eigenvectors (rows, ``m ≥ k``, descending eigenvalues) computed at the same
            weights, to skip Lanczos; the first ``k`` rows are used (re-orthonormalised).
        eigenvalues: their eigenvalues (stored in the result; optional).

    Raises:
        ValueError: if ``k`` is out of range, ``curvature`` unknown or ``eigenvectors`` of the wrong shape.
        TypeError: if ``k`` is not an int.
    """
    opts = OverlapOptions(k, curvature, tol, max_iter)
    return measure_gradient_overlap(
        model, probe, opts, seed, params, eigenvectors=eigenvectors, eigenvalues=eigenvalues
    )


def measure_gradient_overlap(
    model: nn.Module,
    probe: Probe,
    options: OverlapOptions,
    seed: int = 0,
    params: ParamsArg = None,
    *,
    eigenvectors: torch.Tensor | None = None,
    eigenvalues: torch.Tensor | None = None,
) -> GradientOverlapResult:
    """:func:`gradient_overlap` on validated options (the :class:`~ignite_landscape.GradientOverlap` handler runs it).

    Example:
        >>> probe = Probe((torch.randn(20, 3).double(), torch.randn(20, 1).double()), torch.nn.MSELoss())
        >>> res = measure_gradient_overlap(torch.nn.Linear(3, 1).double(), probe, OverlapOptions(k=1))
        >>> 0.0 <= res.value <= 1.0
        True
    """
    k, curvature, tol, max_iter = options.k, options.curvature, options.tol, options.max_iter
    with probe.session(model, params) as s:
        n = s.space.numel
        if k >= n:
            raise ValueError(f"k must be smaller than the number of parameters ({n}), got {k}")
        g = s.grad().double()
        device = g.device
        before = s.num_hvps
        if eigenvectors is not None:
            if not isinstance(eigenvectors, torch.Tensor) or eigenvectors.dim() != 2 or eigenvectors.shape[1] != n:
                raise ValueError(
                    f"eigenvectors must be a (m, {n}) tensor of rows, got {getattr(eigenvectors, 'shape', None)}"
                )
            if eigenvectors.shape[0] < k:
                raise ValueError(f"eigenvectors holds {eigenvectors.shape[0]} vectors, fewer than k={k}")
            U = eigenvectors[:k].detach().to(device=device, dtype=torch.float64)
            lam = (
                torch.full((k,), float("nan"), dtype=torch.float64)
                if eigenvalues is None
                else eigenvalues[:k].detach().double().cpu()
            )
            reused = True
        else:
            res = lanczos(
                curvature_operator(s, curvature, seed),
                n,
                k=k,
                which="largest",
                tol=tol,
                max_iter=max_iter,
                seed=seed,
                dtype=s.dtype,
                device=device,
                return_eigenvectors=True,
            )
            U = res.eigenvectors.to(torch.float64)
            lam = res.eigenvalues.double().cpu()
            reused = False
        used = s.num_hvps - before
    # Ritz vectors are orthonormal to working precision; QR makes P_k an exact projector regardless.
    Q, _ = torch.linalg.qr(U.T)
    sq = float(torch.dot(g, g))
    if sq == 0.0 or not math.isfinite(sq):
        nan = torch.full((k,), float("nan"), dtype=torch.float64)
        return GradientOverlapResult(float("nan"), nan, lam, math.sqrt(sq), curvature, used, reused)
    per_vector = ((U @ g) ** 2 / sq).cpu()
    value = float(torch.sum((Q.T @ g) ** 2) / sq)
    return GradientOverlapResult(value, per_vector, lam, math.sqrt(sq), curvature, used, reused)
